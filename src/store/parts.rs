//! How a readings block lies in sled: cut into parts of at most
//! `PART_MAX_BYTES`, the first under the block's key (the big-endian
//! sequence number of its first reading), the others under that key
//! followed by the part's big-endian `u32` index. A block's parts are thus
//! the keys in `key(first)..key(first + 1)`, in order.
//!
//! Why parts: sled 0.34 writes a page (a leaf of up to a few dozen entries)
//! that serializes to more than a quarter of its 512 KiB segment as a
//! separate blob file. Blob files of removed values stayed on disk long
//! after (a 64 MiB budget of 8,192-sample waveform blocks took 1.8 GB of
//! blob files), and its cache counts a blob by the pointer left in the log,
//! not by the value read, so reading them grew memory past the cache size.
//! Leaves of small values stay inline, in segments that sled cleans and
//! reuses. Stores written before parts hold whole blocks under 8-byte keys:
//! a block of one part, read the same way.

use std::iter::Peekable;

use sled::IVec;

use super::{block_len_at, decode_block_at, key, seq_of, StoreError};
use crate::model::Reading;

/// Most bytes of a block in one sled value. Leaves of sled 0.34 were seen
/// with up to 34 entries before they split (inserts of one transaction);
/// 34 parts of 2 KiB stay well under the 128 KiB at which a page becomes
/// a blob.
pub(super) const PART_MAX_BYTES: usize = 2048;

/// The key of part `index` of the block starting at `first`.
fn part_key(first: u64, index: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(12);
    k.extend_from_slice(&key(first));
    if index > 0 {
        k.extend_from_slice(&index.to_be_bytes());
    }
    k
}

/// The entries to insert for an encoded block starting at `first`.
pub(super) fn split(first: u64, encoded: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    encoded
        .chunks(PART_MAX_BYTES)
        .enumerate()
        .map(|(i, part)| (part_key(first, i as u32), part.to_vec()))
        .collect()
}

/// One block as stored: the keys and values of its parts, in order.
pub(super) struct StoredBlock {
    pub first: u64,
    pub keys: Vec<IVec>,
    values: Vec<IVec>,
}

impl StoredBlock {
    /// Bytes it is accounted for: keys and values of every part.
    pub fn stored_bytes(&self) -> u64 {
        self.keys
            .iter()
            .zip(&self.values)
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
    }

    /// Number of readings, from the head of the first part alone.
    pub fn len(&self) -> Result<u64, StoreError> {
        block_len_at(self.first, &self.values[0])
    }

    pub fn decode(&self) -> Result<Vec<Reading>, StoreError> {
        if let [only] = self.values.as_slice() {
            return decode_block_at(self.first, only);
        }
        let mut bytes = Vec::with_capacity(self.values.iter().map(|v| v.len()).sum());
        for v in &self.values {
            bytes.extend_from_slice(v);
        }
        decode_block_at(self.first, &bytes)
    }
}

/// Blocks from an iterator over the readings tree, in key order. A part
/// whose block's first part is missing (a damaged store) makes a block of
/// its own, which does not decode.
pub(super) fn blocks<I>(entries: I) -> Blocks<I>
where
    I: Iterator<Item = sled::Result<(IVec, IVec)>>,
{
    Blocks {
        entries: entries.peekable(),
    }
}

pub(super) struct Blocks<I: Iterator> {
    entries: Peekable<I>,
}

impl<I> Iterator for Blocks<I>
where
    I: Iterator<Item = sled::Result<(IVec, IVec)>>,
{
    type Item = Result<StoredBlock, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (k, v) = match self.entries.next()? {
            Ok(entry) => entry,
            Err(e) => return Some(Err(e.into())),
        };
        let first = seq_of(&k);
        let mut block = StoredBlock {
            first,
            keys: vec![k],
            values: vec![v],
        };
        // Continuation parts: longer keys with the same first 8 bytes.
        let continues = |e: &sled::Result<(IVec, IVec)>| matches!(e, Ok((k, _)) if k.len() > 8 && seq_of(k) == first);
        while let Some(Ok((k, v))) = self.entries.next_if(continues) {
            block.keys.push(k);
            block.values.push(v);
        }
        Some(Ok(block))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<sled::Result<(IVec, IVec)>> {
        pairs
            .iter()
            .map(|(k, v)| Ok((IVec::from(k.as_slice()), IVec::from(v.as_slice()))))
            .collect()
    }

    #[test]
    fn parts_sort_after_their_head_and_before_the_next_block() {
        let a = split(7, &vec![1u8; PART_MAX_BYTES * 2 + 1]);
        assert_eq!(a.len(), 3);
        assert_eq!(a[0].0, key(7).to_vec());
        assert!(a.iter().all(|(_, v)| v.len() <= PART_MAX_BYTES));
        assert!(a.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(a.last().unwrap().0 < key(8).to_vec());
        let mut all = split(8, b"x");
        all.extend(a.clone());
        all.sort();
        let got: Vec<StoredBlock> = blocks(entries(&all).into_iter())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].first, got[0].keys.len()), (7, 3));
        assert_eq!((got[1].first, got[1].keys.len()), (8, 1));
        let bytes: u64 = a.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        assert_eq!(got[0].stored_bytes(), bytes);
    }

    #[test]
    fn a_part_without_its_head_is_a_block_that_does_not_decode() {
        let a = split(7, &vec![0xffu8; PART_MAX_BYTES + 10]);
        let got: Vec<StoredBlock> = blocks(entries(&a[1..]).into_iter())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].first, 7);
        assert!(got[0].decode().is_err());
    }
}

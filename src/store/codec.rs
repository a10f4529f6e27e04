//! Encoding of readings-log blocks: a CBOR array of readings.

use crate::model::Reading;

use super::StoreError;

pub fn encode_block(readings: &[Reading]) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(readings.iter().map(Reading::approx_bytes).sum());
    ciborium::ser::into_writer(readings, &mut out).map_err(|e| StoreError::Encode {
        what: "readings block",
        detail: e.to_string(),
    })?;
    Ok(out)
}

pub fn decode_block(bytes: &[u8]) -> Result<Vec<Reading>, String> {
    ciborium::de::from_reader(bytes).map_err(|e| e.to_string())
}

/// Number of readings in an encoded block, read from the CBOR array header
/// alone (RFC 8949 section 3: major type 4, length in the additional info).
pub fn block_len(bytes: &[u8]) -> Result<u64, String> {
    let (&first, rest) = bytes.split_first().ok_or("empty block")?;
    if first >> 5 != 4 {
        return Err(format!(
            "block does not start with a CBOR array (byte {first:#04x})"
        ));
    }
    let info = first & 0x1f;
    let n = match info {
        0..=23 => return Ok(u64::from(info)),
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        _ => return Err(format!("unsupported CBOR array length encoding {info}")),
    };
    let len = rest.get(..n).ok_or("truncated CBOR array header")?;
    Ok(len.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// Split readings into blocks of at most `max_readings` and about `max_bytes`.
pub fn chunk(
    readings: &[Reading],
    max_readings: usize,
    max_bytes: usize,
) -> impl Iterator<Item = &[Reading]> {
    let mut rest = readings;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut n = 0;
        while n < rest.len() && n < max_readings {
            bytes += rest[n].approx_bytes();
            n += 1;
            if bytes >= max_bytes {
                break;
            }
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Some(head)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Value, Waveform};

    fn scalar(i: usize) -> Reading {
        Reading {
            device: "d".into(),
            metric: "m".into(),
            time_ms: i as i64,
            value: Value::Scalar(i as f64),
        }
    }

    #[test]
    fn block_round_trip_and_header_length() {
        for n in [1usize, 23, 24, 255, 256, 70_000] {
            let rs: Vec<_> = (0..n).map(scalar).collect();
            let bytes = encode_block(&rs).unwrap();
            assert_eq!(block_len(&bytes).unwrap(), n as u64);
            assert_eq!(decode_block(&bytes).unwrap(), rs);
        }
        let w = Reading {
            value: Value::Waveform(Waveform {
                sample_rate_hz: 100.0,
                samples: vec![1.5, -2.0],
            }),
            ..scalar(0)
        };
        let bytes = encode_block(std::slice::from_ref(&w)).unwrap();
        assert_eq!(decode_block(&bytes).unwrap(), vec![w]);
        assert!(block_len(&[0xa0]).is_err());
        assert!(block_len(&[]).is_err());
        assert!(block_len(&[0x99, 1]).is_err());
    }

    #[test]
    fn chunks_respect_both_limits() {
        let rs: Vec<_> = (0..10).map(scalar).collect();
        let sizes: Vec<usize> = chunk(&rs, 4, usize::MAX).map(<[Reading]>::len).collect();
        assert_eq!(sizes, vec![4, 4, 2]);
        let one = rs[0].approx_bytes();
        let sizes: Vec<usize> = chunk(&rs, 100, one * 3).map(<[Reading]>::len).collect();
        assert_eq!(sizes, vec![3, 3, 3, 1]);
        assert_eq!(chunk(&[], 4, 4).count(), 0);
    }
}

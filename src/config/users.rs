//! The embedded broker's users file (`embedded_broker.users_file`): one
//! `name:hash` line per user, the password hashed with PBKDF2-HMAC-SHA256
//! (RFC 8018) under a salt of its own, so the file holds no password.
//! `vigil hash-password NAME` writes such a line. `#` starts a comment line.
//!
//! ```text
//! sensor-1:$pbkdf2-sha256$10000$9f0c…(salt, hex)$5be1…(32 bytes, hex)
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};

use super::diag::ConfigError;

const SCHEME: &str = "$pbkdf2-sha256$";
const ALGORITHM: ring::pbkdf2::Algorithm = ring::pbkdf2::PBKDF2_HMAC_SHA256;

/// Iterations of a new hash. A sign-in the broker does not remember costs
/// one hash: about 2 ms of an x86 core with SHA instructions, several times
/// that on an ARM core without them, so a few hundred sensors reconnecting
/// at once are let in within seconds, while each guess costs as much.
pub const DEFAULT_ITERATIONS: u32 = 10_000;
/// Iterations a users file may ask for: below the lowest a guess is cheap;
/// above the highest each sign-in would hold a core for seconds.
const ITERATIONS: std::ops::RangeInclusive<u32> = 1_000..=10_000_000;
const SALT_BYTES: usize = 16;
const SALTS: std::ops::RangeInclusive<usize> = 8..=64;
const HASH_BYTES: usize = 32;
/// A users file larger than this is refused (about 10,000 users).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// A salted PBKDF2-HMAC-SHA256 hash of a password.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: [u8; HASH_BYTES],
}

impl PasswordHash {
    /// Hash `password` under a new random salt.
    pub fn new(password: &str) -> Result<PasswordHash, String> {
        let mut salt = vec![0; SALT_BYTES];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| "the system's random number generator failed".to_string())?;
        let iterations = NonZeroU32::new(DEFAULT_ITERATIONS).expect("not zero");
        let mut hash = [0; HASH_BYTES];
        ring::pbkdf2::derive(ALGORITHM, iterations, &salt, password.as_bytes(), &mut hash);
        Ok(PasswordHash {
            iterations,
            salt,
            hash,
        })
    }

    /// Parse `$pbkdf2-sha256$ITERATIONS$SALT$HASH` (salt and hash in hex).
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        let expected = "expected $pbkdf2-sha256$ITERATIONS$SALT$HASH (salt and hash in hex)";
        let rest = text.strip_prefix(SCHEME).ok_or_else(|| {
            format!("the password is not hashed, or not with PBKDF2-SHA256; {expected}")
        })?;
        let parts: Vec<&str> = rest.split('$').collect();
        let [iterations, salt, hash] = parts[..] else {
            return Err(expected.to_string());
        };
        let iterations = iterations
            .parse::<u32>()
            .ok()
            .filter(|i| ITERATIONS.contains(i))
            .and_then(NonZeroU32::new)
            .ok_or_else(|| {
                format!(
                    "iterations {iterations:?}: expected {} to {}",
                    ITERATIONS.start(),
                    ITERATIONS.end()
                )
            })?;
        let salt = from_hex(salt)
            .filter(|s| SALTS.contains(&s.len()))
            .ok_or_else(|| {
                format!(
                    "the salt is not {} to {} bytes in hex",
                    SALTS.start(),
                    SALTS.end()
                )
            })?;
        let hash = from_hex(hash)
            .and_then(|h| <[u8; HASH_BYTES]>::try_from(h).ok())
            .ok_or_else(|| format!("the hash is not {HASH_BYTES} bytes in hex"))?;
        Ok(PasswordHash {
            iterations,
            salt,
            hash,
        })
    }

    /// Does `password` hash to this? (In constant time, in `ring`.) Takes
    /// as long as the iterations say: call it off the async threads.
    pub fn verify(&self, password: &str) -> bool {
        ring::pbkdf2::verify(
            ALGORITHM,
            self.iterations,
            &self.salt,
            password.as_bytes(),
            &self.hash,
        )
        .is_ok()
    }
}

impl fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}${}${}",
            self.iterations,
            hex(&self.salt),
            hex(&self.hash)
        )
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PasswordHash(<redacted>)")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// Why `name` cannot be a user name, if it cannot: MQTT carries it as a
/// UTF-8 string, and the file separates it from the hash with `:`.
pub fn check_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 65_535 {
        return Err("expected a user name of 1 to 65535 bytes".into());
    }
    if name.contains(':') || name.chars().any(char::is_control) || name.trim() != name {
        return Err(format!(
            "{name:?}: a user name has no `:`, no control characters and no leading or trailing spaces"
        ));
    }
    Ok(())
}

/// The users of the embedded broker and their password hashes.
#[derive(Clone, PartialEq, Eq)]
pub struct Users(BTreeMap<String, PasswordHash>);

impl Users {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The hash to check a password of `user` against.
    pub fn get(&self, user: &str) -> Option<&PasswordHash> {
        self.0.get(user)
    }

    /// Read a users file; every bad line is an error naming the file and
    /// the line (never the line's text, which may hold a password).
    pub fn load(path: &Path, errors: &mut Vec<ConfigError>) -> Option<Users> {
        let error = |line, message: String| ConfigError {
            file: path.to_path_buf(),
            line,
            message,
        };
        let text = match std::fs::metadata(path) {
            Ok(m) if m.len() > MAX_FILE_BYTES => {
                errors.push(error(
                    None,
                    format!("the users file is over {MAX_FILE_BYTES} bytes"),
                ));
                return None;
            }
            Ok(_) => match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(error(None, format!("cannot read the users file: {e}")));
                    return None;
                }
            },
            Err(e) => {
                errors.push(error(None, format!("cannot read the users file: {e}")));
                return None;
            }
        };
        match Users::parse(&text) {
            Ok(users) => Some(users),
            Err(bad) => {
                errors.extend(bad.into_iter().map(|(line, m)| error(Some(line), m)));
                None
            }
        }
    }

    /// Parse the text of a users file: the users, or every bad line
    /// (1-based) with what is wrong.
    pub fn parse(text: &str) -> Result<Users, Vec<(usize, String)>> {
        let mut users = BTreeMap::new();
        let mut bad = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, hash)) = line.split_once(':') else {
                bad.push((
                    n,
                    "expected NAME:HASH, as `vigil hash-password NAME` prints it".into(),
                ));
                continue;
            };
            if let Err(e) = check_user_name(name) {
                bad.push((n, e));
                continue;
            }
            match PasswordHash::parse(hash) {
                Err(e) => bad.push((
                    n,
                    format!("user {name:?}: {e}; `vigil hash-password {name}` prints the line"),
                )),
                Ok(_) if users.contains_key(name) => {
                    bad.push((n, format!("user {name:?} is listed twice")))
                }
                Ok(h) => {
                    users.insert(name.to_string(), h);
                }
            }
        }
        if users.is_empty() && bad.is_empty() {
            bad.push((1, "no users; expected NAME:HASH lines".into()));
        }
        if bad.is_empty() {
            Ok(Users(users))
        } else {
            Err(bad)
        }
    }
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only_and_survives_its_text_form() {
        let h = PasswordHash::new("correct horse").unwrap();
        let text = h.to_string();
        assert!(text.starts_with("$pbkdf2-sha256$10000$"), "{text}");
        let back = PasswordHash::parse(&text).unwrap();
        assert_eq!(back, h);
        assert!(back.verify("correct horse"));
        assert!(!back.verify("correct horse "));
        assert!(!back.verify(""));
        // Two hashes of one password differ (their salts do).
        assert_ne!(
            PasswordHash::new("correct horse").unwrap().to_string(),
            text
        );
        assert_eq!(format!("{h:?}"), "PasswordHash(<redacted>)");
    }

    #[test]
    fn a_known_vector_verifies() {
        // RFC 7914 §11: PBKDF2-HMAC-SHA256, P = "passwd", S = "salt", c = 1,
        // dkLen = 64; the first 32 bytes (below the iteration floor, so
        // built directly rather than parsed).
        let h = PasswordHash {
            iterations: NonZeroU32::new(1).unwrap(),
            salt: b"salt".to_vec(),
            hash: from_hex("55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc")
                .unwrap()
                .try_into()
                .unwrap(),
        };
        assert!(h.verify("passwd"));
        assert!(!h.verify("passwe"));
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number_and_without_its_text() {
        let good = format!("sensor-1:{}", PasswordHash::new("pw").unwrap());
        let text = format!(
            "# users\n{good}\n\nsensor-2:hunter2\nno colon here\n{good}\n:{}\nsensor-3:$pbkdf2-sha256$10$00112233445566778899aabbccddeeff${}\nsensor-4:$pbkdf2-sha256$10000$0011${}\n",
            PasswordHash::new("x").unwrap(),
            "00".repeat(32),
            "00".repeat(32),
        );
        let bad = Users::parse(&text).unwrap_err();
        let lines: Vec<usize> = bad.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [4, 5, 6, 7, 8, 9], "{bad:#?}");
        assert!(
            bad[0].1.contains("not hashed") && bad[0].1.contains("vigil hash-password sensor-2")
        );
        assert!(bad.iter().all(|(_, m)| !m.contains("hunter2")), "{bad:#?}");
        assert!(bad[2].1.contains("listed twice"));
        assert!(bad[4].1.contains("iterations"));
        assert!(bad[5].1.contains("salt"));
        assert!(Users::parse("# nobody\n").is_err());
        let users = Users::parse(&format!("{good}\n")).unwrap();
        assert!(users.get("sensor-1").unwrap().verify("pw"));
        assert_eq!(format!("{users:?}"), "{\"sensor-1\"}");
    }
}

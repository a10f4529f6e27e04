//! Who the embedded broker lets in when it has a users file: a client
//! signing in with a user's password, or one of vigil's own connections
//! with its secret. Anyone else (no username, an unknown user, a wrong
//! password, or one of vigil's client ids without the secret) is refused:
//! rumqttd closes the connection before it reaches the router.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ring::hmac;
use ring::rand::SystemRandom;
use tokio::sync::Semaphore;

use super::{BrokerError, Insiders};
use crate::config::{PasswordHash, Users};

/// Password hashes checked at once: each holds a core for a few ms, and a
/// flood of sign-ins must leave cores to the rest of vigil.
const CONCURRENT_CHECKS: usize = 1;

pub(super) struct Gate {
    users: Users,
    insiders: Insiders,
    /// Keys the tags below; drawn at each start.
    key: hmac::Key,
    /// Tag of vigil's own secret.
    insider_tag: hmac::Tag,
    /// Tag of the password each user last signed in with: a sensor that
    /// reconnects costs one HMAC, not another password hash. One entry per
    /// user of the file at most.
    verified: Mutex<HashMap<String, hmac::Tag>>,
    /// Checked for unknown users, so that a refusal takes as long whether
    /// the user exists or not.
    decoy: PasswordHash,
    checks: Semaphore,
}

impl Gate {
    pub(super) fn new(users: Users, insiders: Insiders) -> Result<Gate, BrokerError> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .map_err(|_| BrokerError::Random)?;
        let insider_tag = hmac::sign(&key, insiders.secret.as_bytes());
        Ok(Gate {
            users,
            insiders,
            key,
            insider_tag,
            verified: Mutex::new(HashMap::new()),
            decoy: PasswordHash::new("").map_err(|_| BrokerError::Random)?,
            checks: Semaphore::new(CONCURRENT_CHECKS),
        })
    }

    /// Does this CONNECT get in? (rumqttd's auth handler.)
    pub(super) async fn admits(
        self: Arc<Self>,
        client_id: String,
        user: String,
        password: String,
    ) -> bool {
        if self.insiders.presents_own_id(&client_id) {
            return hmac::verify(&self.key, password.as_bytes(), self.insider_tag.as_ref()).is_ok();
        }
        let remembered = self
            .verified
            .lock()
            .ok()
            .and_then(|v| v.get(&user).cloned());
        if let Some(tag) = remembered {
            if hmac::verify(&self.key, password.as_bytes(), tag.as_ref()).is_ok() {
                return true;
            }
        }
        let (known, hash) = match self.users.get(&user) {
            Some(h) => (true, h.clone()),
            None => (false, self.decoy.clone()),
        };
        let Ok(_permit) = self.checks.acquire().await else {
            return false;
        };
        let candidate = password.clone();
        // The hash takes milliseconds: off the broker's one async thread.
        let matches = tokio::task::spawn_blocking(move || hash.verify(&candidate))
            .await
            .unwrap_or(false);
        if matches && known {
            if let Ok(mut v) = self.verified.lock() {
                v.insert(user, hmac::sign(&self.key, password.as_bytes()));
            }
        }
        matches && known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> (Arc<Gate>, Insiders) {
        let line = format!("sensor-1:{}\n", PasswordHash::new("correct horse").unwrap());
        let users = Users::parse(&line).unwrap();
        let insiders = Insiders::draw().unwrap();
        (
            Arc::new(Gate::new(users, insiders.clone()).unwrap()),
            insiders,
        )
    }

    async fn admits(g: &Arc<Gate>, id: &str, user: &str, password: &str) -> bool {
        g.clone()
            .admits(id.into(), user.into(), password.into())
            .await
    }

    #[tokio::test]
    async fn users_get_in_with_their_password_only() {
        let (g, _) = gate();
        assert!(admits(&g, "s1", "sensor-1", "correct horse").await);
        // Again, from what it remembers.
        assert!(admits(&g, "s1", "sensor-1", "correct horse").await);
        assert!(!admits(&g, "s1", "sensor-1", "correct horse!").await);
        assert!(!admits(&g, "s1", "sensor-2", "correct horse").await);
        assert!(!admits(&g, "s1", "", "").await);
    }

    #[tokio::test]
    async fn vigils_own_client_ids_need_vigils_secret() {
        let (g, insiders) = gate();
        let mut own = crate::config::BrokerConfig {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: "vigil-gw".into(),
            keepalive: std::time::Duration::from_secs(30),
            credentials: None,
            tls: None,
            max_payload_bytes: 1 << 20,
            reconnect_min: std::time::Duration::from_millis(500),
            reconnect_max: std::time::Duration::from_secs(30),
        };
        insiders.admit(&mut own, "127.0.0.1:4000".parse().unwrap());
        assert_eq!((own.host.as_str(), own.port), ("127.0.0.1", 4000));
        assert!(own.client_id.starts_with("vigil-gw-") && own.client_id.len() == 9 + 32);
        let c = own.credentials.clone().unwrap();
        let secret = c.password.unwrap();
        assert!(admits(&g, &own.client_id, &c.username, &secret).await);
        // A user of the file with vigil's id, or anyone with a wrong secret:
        // refused.
        assert!(!admits(&g, &own.client_id, "sensor-1", "correct horse").await);
        assert!(!admits(&g, &own.client_id, &c.username, "guess").await);
        // The secret does not make other ids vigil's.
        assert!(!admits(&g, "vigil-gw", &c.username, &secret).await);
        // Another start draws another suffix and secret.
        let other = Insiders::draw().unwrap();
        assert_ne!(other.suffix, insiders.suffix);
        assert_ne!(other.secret, insiders.secret);
    }
}

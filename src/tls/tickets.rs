//! TLS session tickets that every instance of a fleet can resume: keys from a file the operator
//! distributes like a certificate (`tls.ticket_keys`).
//!
//! Why a key file rather than one shared secret that time-period keys are derived from: with a
//! derived scheme the secret never changes, so whoever reads it once (a backup, a leaked Secret)
//! can decrypt every ticket, past and future. Keys in a file are replaced by the operator's
//! rotation, and each exposes only what it encrypted while it was first in the file; rotating is
//! the same job as renewing a certificate, with the same tools (a Kubernetes Secret, config
//! management). nginx (`ssl_session_ticket_key`) and HAProxy (`tls-ticket-keys`) chose the same.
//!
//! The file holds one key per line: 32 random bytes in base64 (`head -c 32 /dev/urandom |
//! base64`), at most [`MAX_KEYS`]. The first line encrypts new tickets; every line decrypts. On
//! each install the keys of the previous install keep decrypting until the next one, so a ticket
//! survives one rotation even when the operator drops the old key from the file at once. Keys of
//! older installs are erased from memory: the key bytes gatehouse holds are zeroed when dropped,
//! and the cipher is keyed afresh for each ticket from them (so no expanded key schedule outlives
//! its use).
//!
//! A ticket is the encrypting key's id (the first 8 bytes of the key's SHA-256, the same on every
//! instance), a random 96-bit nonce, and the session state sealed with AES-256-GCM-SIV (which
//! stays safe if two instances ever draw the same nonce), the id as associated data.
//!
//! Without `tls.ticket_keys` each process makes its own rotating keys (rustls' ticketer), as
//! before: tickets then resume only on the instance that issued them.

use std::sync::Arc;

use arc_swap::ArcSwap;
use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use rustls::server::ProducesTickets;
use zeroize::Zeroizing;

/// Keys a file may hold.
pub const MAX_KEYS: usize = 8;
/// Largest ticket key file read.
pub const MAX_TICKET_KEY_FILE: u64 = 4096;
const KEY_BYTES: usize = 32;
const ID_BYTES: usize = 8;
/// How long clients are told a ticket is useful: half a day, a common rotation period.
pub const LIFETIME_SECONDS: u32 = 12 * 3600;

/// One key of the file. The bytes are zeroed when it is dropped; `Debug` shows neither them
/// nor the id.
pub struct TicketKey {
    id: [u8; ID_BYTES],
    secret: Zeroizing<[u8; KEY_BYTES]>,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("TicketKey(redacted)")
    }
}

impl TicketKey {
    fn new(secret: Zeroizing<[u8; KEY_BYTES]>) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_ref());
        let mut id = [0u8; ID_BYTES];
        id.copy_from_slice(&digest.as_ref()[..ID_BYTES]);
        Self { id, secret }
    }

    /// The cipher, keyed for one use.
    fn cipher(&self) -> Option<LessSafeKey> {
        UnboundKey::new(&AES_256_GCM_SIV, self.secret.as_ref())
            .ok()
            .map(LessSafeKey::new)
    }

    fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(ID_BYTES + NONCE_LEN + plain.len() + 16);
        ticket.extend_from_slice(&self.id);
        ticket.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        self.cipher()?
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(self.id), &mut sealed)
            .ok()?;
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let rest = ticket.strip_prefix(&self.id[..])?;
        let (nonce, sealed) = rest.split_at_checked(NONCE_LEN)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut plain = sealed.to_vec();
        let opened = self
            .cipher()?
            .open_in_place(nonce, Aad::from(self.id), &mut plain)
            .ok()?
            .len();
        plain.truncate(opened);
        Some(plain)
    }
}

/// `tls.ticket_keys`, read and checked with the configuration (plain data in the snapshot).
#[derive(Debug)]
pub struct TicketKeyFile {
    pub source: String,
    keys: Vec<TicketKey>,
}

impl TicketKeyFile {
    /// Read and check the file at `path`: a regular file of at most 4 KiB, not readable or
    /// writable by others (like a private key), holding 1 to [`MAX_KEYS`] distinct keys of 32
    /// bytes in base64, one per line (`#` comments and blank lines aside). The error says what
    /// is wrong, never what a key is.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        let source = path.display().to_string();
        let mode = std::fs::metadata(path)
            .map_err(|err| format!("cannot read ticket key file {source}: {err}"))?
            .permissions()
            .mode();
        if mode & 0o007 != 0 {
            return Err(format!(
                "ticket key file {source} is open to other users (mode {:o}); allow its owner (and group) only, e.g. chmod 600",
                mode & 0o777
            ));
        }
        let bytes = Zeroizing::new(
            crate::files::read_bounded(path, MAX_TICKET_KEY_FILE)
                .map_err(|err| format!("cannot read ticket key file {source}: {err}"))?,
        );
        let text = std::str::from_utf8(&bytes).map_err(|_| format!("ticket key file {source} is not text"))?;
        let mut keys: Vec<TicketKey> = Vec::new();
        for (number, line) in text.lines().enumerate().map(|(index, line)| (index + 1, line.trim())) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let decoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(line).map_err(|_| {
                format!("ticket key file {source}, line {number}: expected a key in base64 (head -c 32 /dev/urandom | base64)")
            })?);
            let secret: [u8; KEY_BYTES] = decoded.as_slice().try_into().map_err(|_| {
                format!(
                    "ticket key file {source}, line {number}: expected 32 bytes of key, found {}",
                    decoded.len()
                )
            })?;
            let key = TicketKey::new(Zeroizing::new(secret));
            if keys.iter().any(|known| known.id == key.id) {
                return Err(format!("ticket key file {source}, line {number}: the same key twice"));
            }
            keys.push(key);
        }
        match keys.len() {
            0 => Err(format!("ticket key file {source} holds no key")),
            count if count > MAX_KEYS => Err(format!(
                "ticket key file {source} holds {count} keys; at most {MAX_KEYS}"
            )),
            _ => Ok(Self { source, keys }),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The keys' ids, in order: two files with the same ids hold the same keys.
    fn key_ids(&self) -> impl Iterator<Item = [u8; ID_BYTES]> + '_ {
        self.keys.iter().map(|key| key.id)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What the ring encrypts and decrypts with: the keys of the last install and of the one before.
#[derive(Debug, Default)]
struct RingKeys {
    current: Option<Arc<TicketKeyFile>>,
    previous: Option<Arc<TicketKeyFile>>,
    /// When the current encrypting key was first installed (seconds since the Unix epoch).
    encrypting_since: Option<i64>,
}

impl RingKeys {
    fn encrypting(&self) -> Option<&TicketKey> {
        self.current.as_ref().and_then(|file| file.keys.first())
    }

    fn decrypting(&self) -> impl Iterator<Item = &TicketKey> {
        (self.current.iter().chain(&self.previous)).flat_map(|file| file.keys.iter())
    }
}

/// The ticketer that every TLS policy of one running gatehouse shares (kept in
/// [`crate::live`]): the shared keys of the configuration in force when there are some, the
/// process's own rotating keys otherwise.
#[derive(Debug)]
pub struct TicketRing {
    keys: ArcSwap<RingKeys>,
    /// rustls' rotating ticketer; `None` only if the system's random generator failed, and then
    /// tickets are only issued with shared keys.
    own: Option<Arc<dyn ProducesTickets>>,
}

impl Default for TicketRing {
    fn default() -> Self {
        let own = rustls::crypto::aws_lc_rs::Ticketer::new()
            .map_err(|err| tracing::error!(error = %err, "cannot make session ticket keys; clients resume nothing"))
            .ok();
        Self {
            keys: ArcSwap::from_pointee(RingKeys::default()),
            own,
        }
    }
}

impl TicketRing {
    /// Install the keys of a configuration (`None`: none configured). When they differ from the
    /// keys in force, those keep decrypting until the next change; older ones are dropped (and
    /// erased once no snapshot holds them). A reload that leaves the key file as it was changes
    /// nothing here, so an unrelated reload never retires a rotation's old keys early.
    pub fn install(&self, file: Option<&Arc<TicketKeyFile>>) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| i64::try_from(since.as_secs()).unwrap_or(i64::MAX));
        let before = self.keys.load();
        let same_current = match (&before.current, file) {
            (Some(old), Some(new)) => old.key_ids().eq(new.key_ids()),
            (None, None) => true,
            _ => false,
        };
        if same_current {
            return;
        }
        let encrypting_id = file.and_then(|file| file.keys.first()).map(|key| key.id);
        let encrypting_since = match (before.encrypting().map(|key| key.id), encrypting_id) {
            (Some(old), Some(new)) if old == new => before.encrypting_since,
            (_, Some(_)) => Some(now),
            (_, None) => None,
        };
        match file {
            Some(file) => {
                tracing::info!(file = %file.source, keys = file.len(), "session ticket keys installed: tickets resume on every instance with this file")
            }
            None => tracing::info!("no shared session ticket keys: tickets resume on this instance only"),
        }
        self.keys.store(Arc::new(RingKeys {
            current: file.cloned(),
            previous: before.current.clone(),
            encrypting_since,
        }));
    }

    /// When the key that encrypts new tickets was first installed, if shared keys are in use.
    pub fn encrypting_since(&self) -> Option<i64> {
        self.keys.load().encrypting_since
    }
}

impl ProducesTickets for TicketRing {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        match (self.keys.load().encrypting(), &self.own) {
            (None, Some(own)) => own.lifetime(),
            _ => LIFETIME_SECONDS,
        }
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys.load();
        match keys.encrypting() {
            Some(key) => key.seal(plain),
            None => self.own.as_ref()?.encrypt(plain),
        }
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys.load();
        let id = ticket.get(..ID_BYTES)?;
        match keys.decrypting().find(|key| key.id == id) {
            Some(key) => key.open(ticket),
            // Issued with the process's own keys (before shared keys were configured).
            None => self.own.as_ref()?.decrypt(ticket),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(lines: &[&[u8; 32]]) -> Arc<TicketKeyFile> {
        let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("{err}"));
        let path = dir.path().join("tickets.key");
        let text: String = lines
            .iter()
            .map(|key| format!("{}\n", base64::engine::general_purpose::STANDARD.encode(key)))
            .collect();
        std::fs::write(&path, text).unwrap_or_else(|err| panic!("{err}"));
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap_or_else(|err| panic!("{err}"));
        Arc::new(TicketKeyFile::load(&path).unwrap_or_else(|err| panic!("{err}")))
    }

    fn ring() -> TicketRing {
        TicketRing::default()
    }

    #[test]
    fn instances_with_the_same_file_read_each_others_tickets_and_others_do_not() {
        let (one, two, other) = (ring(), ring(), ring());
        one.install(Some(&key_file(&[&[1; 32], &[2; 32]])));
        two.install(Some(&key_file(&[&[1; 32], &[2; 32]])));
        other.install(Some(&key_file(&[&[3; 32]])));
        let ticket = one.encrypt(b"session state").unwrap_or_default();
        assert_eq!(two.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        assert_eq!(other.decrypt(&ticket), None);
        // A forged or damaged ticket is refused.
        let mut damaged = ticket.clone();
        if let Some(last) = damaged.last_mut() {
            *last ^= 1;
        }
        assert_eq!(two.decrypt(&damaged), None);
        assert_eq!(two.decrypt(&ticket[..10]), None);
    }

    #[test]
    fn a_ticket_survives_one_rotation_and_not_two() {
        let ring = ring();
        ring.install(Some(&key_file(&[&[1; 32]])));
        let since = ring.encrypting_since();
        let ticket = ring.encrypt(b"state").unwrap_or_default();
        // Rotation: the old key left the file at once.
        ring.install(Some(&key_file(&[&[2; 32]])));
        assert!(ring.encrypting_since() >= since);
        assert_eq!(ring.decrypt(&ticket).as_deref(), Some(&b"state"[..]));
        // And the next rotation retires it.
        ring.install(Some(&key_file(&[&[3; 32]])));
        assert_eq!(ring.decrypt(&ticket), None);
    }

    #[test]
    fn a_reload_that_leaves_the_keys_as_they_were_does_not_retire_the_old_ones() {
        let ring = ring();
        ring.install(Some(&key_file(&[&[1; 32]])));
        let ticket = ring.encrypt(b"state").unwrap_or_default();
        ring.install(Some(&key_file(&[&[2; 32]])));
        // Reloads for other reasons: the same key file, read again each time.
        for _ in 0..3 {
            ring.install(Some(&key_file(&[&[2; 32]])));
        }
        assert_eq!(ring.decrypt(&ticket).as_deref(), Some(&b"state"[..]));
    }

    #[test]
    fn without_shared_keys_the_process_uses_its_own() {
        let ring = ring();
        ring.install(None);
        let ticket = ring.encrypt(b"state").unwrap_or_default();
        assert_eq!(ring.decrypt(&ticket).as_deref(), Some(&b"state"[..]));
        assert_eq!(ring.encrypting_since(), None);
    }

    #[test]
    fn bad_files_are_refused_with_the_reason_and_never_the_key() {
        let dir = tempfile::tempdir().unwrap_or_else(|err| panic!("{err}"));
        let path = dir.path().join("tickets.key");
        let secret = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let cases: [(&str, u32, &str); 5] = [
            (&secret, 0o644, "open to other users"),
            ("not base64 at all!", 0o600, "expected a key in base64"),
            ("c2hvcnQ=", 0o600, "expected 32 bytes of key, found 5"),
            ("# only a comment\n", 0o600, "holds no key"),
            (&format!("{secret}\n{secret}\n"), 0o600, "the same key twice"),
        ];
        for (text, mode, expected) in cases {
            std::fs::write(&path, text).unwrap_or_else(|err| panic!("{err}"));
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .unwrap_or_else(|err| panic!("{err}"));
            let error = TicketKeyFile::load(&path).map(|_| ()).expect_err(expected);
            assert!(error.contains(expected), "{error}");
            assert!(!error.contains(&secret), "the error shows the key: {error}");
        }
    }
}

//! The encryption keyring: AES-256-GCM with several keys, as Serf manages them.
//!
//! The primary key seals every outgoing frame; an incoming frame is opened with the primary
//! first, then each other key, so a cluster can rotate keys live: install the new key
//! everywhere, make it primary everywhere, then remove the old one. The associated data is
//! header bytes 8..24 (version, kind, flags, label hash, body length and the reserved bytes
//! between them; see `frame::AAD_RANGE`) followed by the cluster label: a frame cannot be
//! moved to another cluster, nor its kind, flags or length changed, without failing
//! authentication. The rest of the header is not authenticated and need not be: the
//! magic is compared exactly, the checksum covers everything after it, and the reserved
//! bytes 24..32 must be zero. Nonces are random 96-bit values from a ChaCha CSPRNG seeded
//! by the OS (with ~2^32 frames per key the collision probability stays below 2^-32, NIST
//! SP 800-38D's bound for random nonces).
//!
//! The cipher is `ring`'s: several times faster than RustCrypto's `aes-gcm` on a CPU with
//! AES-NI (`cargo bench -p ringleader-wire --bench wire -- aead`; figures in
//! `docs/BENCHMARKS.md`). The price: ring decrypts while it authenticates and zeroes the
//! buffer when the tag does not match, so a frame cannot be retried against a second key
//! in place. With one key (the steady state) we open in place with no copy; while a
//! rotation has several keys installed we keep a copy of the ciphertext (on the stack for
//! datagrams) and restore it before each further try. `aes-gcm` checks the tag before
//! decrypting and would need no copy, but a datagram's copy costs far less than ring saves.

use rand::{RngCore, SeedableRng};
use ring::aead::{AES_256_GCM, Aad as RingAad, LessSafeKey, Nonce, Tag, UnboundKey};

use crate::error::{DecodeError, EncodeError};

/// Length of an AES-256 key.
pub const KEY_LEN: usize = 32;
/// Length of a GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Length of a GCM tag.
pub const TAG_LEN: usize = 16;
/// Most keys a keyring holds (a rotation needs two; the bound stops a runaway installer).
pub const KEYS_MAX: usize = 16;

/// Why a keyring operation was refused. The keyring is unchanged after any error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// The key is not in the keyring.
    #[error("key is not installed; install it first")]
    NotInstalled,
    /// The primary key cannot be removed.
    #[error("refusing to remove the primary key; make another key primary first")]
    RemovePrimary,
    /// The keyring is full.
    #[error("keyring holds its maximum of {max} keys; remove an old key first")]
    Full {
        /// The bound.
        max: usize,
    },
    /// A key of the wrong length was given.
    #[error("a key must be exactly {KEY_LEN} bytes, got {0}")]
    BadKeyLength(usize),
}

struct Key {
    bytes: [u8; KEY_LEN],
    cipher: LessSafeKey,
}

impl Key {
    fn new(bytes: [u8; KEY_LEN]) -> Key {
        // AES-256 accepts every 32-byte key; ring only refuses wrong lengths.
        let unbound = match UnboundKey::new(&AES_256_GCM, &bytes) {
            Ok(k) => k,
            Err(_) => unreachable!("a 32-byte key is always valid for AES-256-GCM"),
        };
        Key {
            bytes,
            cipher: LessSafeKey::new(unbound),
        }
    }
}

/// A set of AES-256-GCM keys; the first is the primary.
pub struct Keyring {
    keys: Vec<Key>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Keyring")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Keyring {
    /// A keyring holding `primary` only.
    pub fn new(primary: [u8; KEY_LEN]) -> Keyring {
        Keyring {
            keys: vec![Key::new(primary)],
        }
    }

    /// A key from a byte slice, checking its length.
    pub fn key_from_slice(bytes: &[u8]) -> Result<[u8; KEY_LEN], KeyringError> {
        bytes
            .try_into()
            .map_err(|_| KeyringError::BadKeyLength(bytes.len()))
    }

    /// Adds `key` as a secondary key. Installing a key that is already there is a no-op.
    pub fn install(&mut self, key: [u8; KEY_LEN]) -> Result<(), KeyringError> {
        if self.position(&key).is_some() {
            return Ok(());
        }
        if self.keys.len() >= KEYS_MAX {
            return Err(KeyringError::Full { max: KEYS_MAX });
        }
        self.keys.push(Key::new(key));
        Ok(())
    }

    /// Makes an installed `key` the primary.
    pub fn use_key(&mut self, key: &[u8; KEY_LEN]) -> Result<(), KeyringError> {
        let at = self.position(key).ok_or(KeyringError::NotInstalled)?;
        self.keys[..=at].rotate_right(1);
        Ok(())
    }

    /// Removes a secondary `key`.
    pub fn remove(&mut self, key: &[u8; KEY_LEN]) -> Result<(), KeyringError> {
        match self.position(key) {
            None => Err(KeyringError::NotInstalled),
            Some(0) => Err(KeyringError::RemovePrimary),
            Some(at) => {
                self.keys.remove(at);
                Ok(())
            }
        }
    }

    /// Every key, the primary first.
    pub fn list(&self) -> Vec<[u8; KEY_LEN]> {
        self.keys.iter().map(|k| k.bytes).collect()
    }

    /// The primary key.
    pub fn primary(&self) -> [u8; KEY_LEN] {
        self.keys[0].bytes
    }

    /// How many keys are installed.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a keyring holds at least its primary.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn position(&self, key: &[u8; KEY_LEN]) -> Option<usize> {
        self.keys.iter().position(|k| &k.bytes == key)
    }

    /// Encrypts `in_out` in place with the primary key; returns the tag.
    pub fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        header_aad: &[u8; 16],
        label: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], EncodeError> {
        let aad = Aad::new(header_aad, label);
        let tag = self.keys[0]
            .cipher
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                RingAad::from(aad.bytes()),
                in_out,
            )
            .map_err(|_| EncodeError::Seal("AES-GCM refused the input (too long)"))?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Authenticates and decrypts `in_out` in place, trying the primary first, then the
    /// others; returns the index of the key that opened it. On failure `in_out` is unchanged
    /// when several keys are installed, and zeroed when only one is.
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        header_aad: &[u8; 16],
        label: &[u8],
        in_out: &mut [u8],
        tag: &[u8],
    ) -> Result<usize, DecodeError> {
        if tag.len() != TAG_LEN {
            return Err(DecodeError::Truncated {
                need: TAG_LEN,
                have: tag.len(),
            });
        }
        let mut tag_bytes = [0u8; TAG_LEN];
        tag_bytes.copy_from_slice(tag);
        let aad = Aad::new(header_aad, label);
        let try_key = |key: &Key, buf: &mut [u8]| {
            key.cipher
                .open_in_place_separate_tag(
                    Nonce::assume_unique_for_key(*nonce),
                    RingAad::from(aad.bytes()),
                    Tag::from(tag_bytes),
                    buf,
                    0..,
                )
                .is_ok()
        };
        if self.keys.len() == 1 {
            if try_key(&self.keys[0], in_out) {
                return Ok(0);
            }
            // ring zeroed the buffer; nothing else will read it.
            return Err(DecodeError::NoKeyAuthenticates { tried: 1 });
        }
        // Several keys: ring zeroes the buffer on a failed try, so keep the ciphertext.
        let mut stack = [0u8; STACK_COPY_MAX];
        let mut heap = Vec::new();
        let saved: &[u8] = if in_out.len() <= STACK_COPY_MAX {
            let s = &mut stack[..in_out.len()];
            s.copy_from_slice(in_out);
            s
        } else {
            heap.extend_from_slice(in_out);
            &heap
        };
        for (i, key) in self.keys.iter().enumerate() {
            if i > 0 {
                in_out.copy_from_slice(saved);
            }
            if try_key(key, in_out) {
                return Ok(i);
            }
        }
        in_out.copy_from_slice(saved);
        Err(DecodeError::NoKeyAuthenticates {
            tried: self.keys.len(),
        })
    }
}

/// Ciphertexts up to this size are saved on the stack while several keys are tried.
const STACK_COPY_MAX: usize = 2048;

/// Associated data: the 16 authenticated header bytes (frame bytes 8..24, as the caller
/// passes them) then the label, on the stack for labels up to [`Aad::INLINE`] bytes (the
/// usual case) so sealing allocates nothing.
struct Aad<'a> {
    inline: [u8; Aad::INLINE + 16],
    len: usize,
    spilled: Option<Vec<u8>>,
    _label: std::marker::PhantomData<&'a [u8]>,
}

impl<'a> Aad<'a> {
    const INLINE: usize = 112;

    fn new(header: &[u8; 16], label: &'a [u8]) -> Aad<'a> {
        let mut inline = [0u8; Aad::INLINE + 16];
        inline[..16].copy_from_slice(header);
        if label.len() <= Aad::INLINE {
            inline[16..16 + label.len()].copy_from_slice(label);
            Aad {
                inline,
                len: 16 + label.len(),
                spilled: None,
                _label: std::marker::PhantomData,
            }
        } else {
            let mut v = header.to_vec();
            v.extend_from_slice(label);
            Aad {
                inline,
                len: 0,
                spilled: Some(v),
                _label: std::marker::PhantomData,
            }
        }
    }

    fn bytes(&self) -> &[u8] {
        match &self.spilled {
            Some(v) => v,
            None => &self.inline[..self.len],
        }
    }
}

/// Random 96-bit nonces from a CSPRNG seeded by the operating system.
pub(crate) struct NonceSource {
    rng: rand::rngs::StdRng,
}

impl NonceSource {
    pub(crate) fn from_os() -> NonceSource {
        NonceSource {
            rng: rand::rngs::StdRng::from_os_rng(),
        }
    }

    pub(crate) fn next(&mut self) -> [u8; NONCE_LEN] {
        let mut n = [0u8; NONCE_LEN];
        self.rng.fill_bytes(&mut n);
        n
    }
}

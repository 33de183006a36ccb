//! Keyring operations and their errors.

use ringleader_wire::keyring::KEYS_MAX;
use ringleader_wire::{Keyring, KeyringError};

fn key(b: u8) -> [u8; 32] {
    [b; 32]
}

#[test]
fn install_use_remove_list() {
    let mut k = Keyring::new(key(1));
    k.install(key(2)).expect("install");
    k.install(key(2)).expect("installing twice is a no-op");
    assert_eq!(k.list(), vec![key(1), key(2)]);
    k.use_key(&key(2)).expect("use");
    assert_eq!(k.primary(), key(2));
    assert_eq!(k.list(), vec![key(2), key(1)]);
    k.remove(&key(1)).expect("remove the old primary");
    assert_eq!(k.list(), vec![key(2)]);
    assert_eq!(k.len(), 1);
}

#[test]
fn the_primary_cannot_be_removed() {
    let mut k = Keyring::new(key(1));
    assert_eq!(k.remove(&key(1)), Err(KeyringError::RemovePrimary));
    assert_eq!(k.list(), vec![key(1)]);
}

#[test]
fn unknown_keys_are_refused() {
    let mut k = Keyring::new(key(1));
    assert_eq!(k.remove(&key(3)), Err(KeyringError::NotInstalled));
    assert_eq!(k.use_key(&key(3)), Err(KeyringError::NotInstalled));
    assert_eq!(k.primary(), key(1));
}

#[test]
fn the_keyring_is_bounded() {
    let mut k = Keyring::new(key(0));
    for b in 1..KEYS_MAX as u8 {
        k.install(key(b)).expect("room");
    }
    assert_eq!(
        k.install(key(200)),
        Err(KeyringError::Full { max: KEYS_MAX })
    );
    assert_eq!(k.len(), KEYS_MAX);
}

#[test]
fn keys_must_be_32_bytes() {
    assert_eq!(
        Keyring::key_from_slice(&[0; 16]),
        Err(KeyringError::BadKeyLength(16))
    );
    assert_eq!(Keyring::key_from_slice(&[5; 32]), Ok(key(5)));
}

#[test]
fn debug_output_never_shows_key_material() {
    let k = Keyring::new(key(0xab));
    let s = format!("{k:?}");
    assert!(!s.contains("171") && !s.contains("ab"), "{s}");
}

//! Socket addresses to and from the bytes of the kernel's `sockaddr` structures: written
//! into send slots and train records, read from the name a multishot `recvmsg` reserves in
//! front of each payload. Reading never trusts the length or the family it is given.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

pub(super) fn write_sockaddr(
    storage: &mut libc::sockaddr_storage,
    addr: SocketAddr,
) -> libc::socklen_t {
    let sa: socket2::SockAddr = addr.into();
    let len = sa.len();
    // SAFETY: `SockAddr` holds a valid sockaddr of `len <= sizeof(sockaddr_storage)` bytes;
    // both are plain old data and do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            sa.as_ptr().cast::<u8>(),
            (storage as *mut libc::sockaddr_storage).cast::<u8>(),
            len as usize,
        );
    }
    len
}

pub(super) fn parse_sockaddr(name: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*name.first()?, *name.get(1)?]);
    let port = u16::from_be_bytes([*name.get(2)?, *name.get(3)?]);
    match family as i32 {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flow = u32::from_be_bytes(name.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trip() {
        for a in ["127.0.0.7:4000", "[::1]:9", "[fe80::1%2]:77"] {
            let addr: SocketAddr = a.parse().expect("addr");
            // SAFETY: all-zero sockaddr_storage is valid.
            let mut s: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let len = write_sockaddr(&mut s, addr) as usize;
            // SAFETY: reading `len` initialized bytes of `s`.
            let bytes = unsafe {
                std::slice::from_raw_parts((&s as *const libc::sockaddr_storage).cast::<u8>(), len)
            };
            assert_eq!(parse_sockaddr(bytes), Some(addr));
        }
        assert_eq!(parse_sockaddr(&[0, 0]), None);
    }
}

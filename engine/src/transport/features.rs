//! What the kernel's io_uring supports, checked once at start-up.
//!
//! The transport needs three things the kernel added over several releases: provided buffer
//! rings (5.19), multishot `recvmsg` (6.0) and `send` with a destination address (6.0).
//! Deferred task running (6.1) is an optimisation we fall back from. A missing requirement
//! is a [`MissingFeature`] naming the feature and the kernel version that introduced it;
//! this module never guesses from the version string alone, it asks the kernel (probe, and
//! a trial registration on a scratch ring), and uses the version only to explain.

use std::fmt;

use io_uring::{IoUring, Probe, opcode};

/// A kernel feature the transport cannot run without.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingFeature {
    /// What is missing, e.g. "multishot recvmsg".
    pub feature: &'static str,
    /// The first Linux version that has it.
    pub since: &'static str,
    /// The running kernel's release string.
    pub kernel: String,
    /// What the kernel said, when it said something.
    pub detail: String,
}

impl fmt::Display for MissingFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "io_uring {} is not available on this kernel ({}); it needs Linux {} or later{}{}",
            self.feature,
            self.kernel,
            self.since,
            if self.detail.is_empty() { "" } else { ": " },
            self.detail
        )
    }
}

impl std::error::Error for MissingFeature {}

/// What the running kernel offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Features {
    /// The kernel release (`uname -r`).
    pub kernel: String,
    /// `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN` (6.1): completions are
    /// produced only when the shard asks for them, in batches, with no interrupts.
    pub defer_taskrun: bool,
    /// UDP generic segmentation offload (`UDP_SEGMENT`, 4.18): one `sendmsg` carries a
    /// run of equal-sized datagrams to one peer down the stack as one buffer; the kernel
    /// (or the NIC) splits it into separate datagrams. Optional (fallback: one send per
    /// datagram).
    pub udp_gso: bool,
}

/// The running kernel's release string, e.g. "6.18.44".
pub fn kernel_release() -> String {
    // SAFETY: `utsname` is plain old data; uname fills it and we read NUL-terminated fields.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid, writable utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".to_string();
    }
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Checks every feature the UDP transport needs on a small scratch ring.
pub fn detect() -> Result<Features, MissingFeature> {
    let kernel = kernel_release();
    let missing = |feature: &'static str, since: &'static str, detail: String| MissingFeature {
        feature,
        since,
        kernel: kernel.clone(),
        detail,
    };
    let ring: IoUring =
        IoUring::new(8).map_err(|e| missing("io_uring_setup", "5.1", e.to_string()))?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| missing("opcode probe (IORING_REGISTER_PROBE)", "5.6", e.to_string()))?;
    for (code, name, since) in [
        (opcode::RecvMsg::CODE, "recvmsg", "5.3"),
        (opcode::Send::CODE, "send", "5.6"),
        (opcode::AsyncCancel::CODE, "async cancel", "5.5"),
    ] {
        if !probe.is_supported(code) {
            return Err(missing(name, since, "opcode not supported".into()));
        }
    }
    // Provided buffer rings: register a one-entry ring on the scratch ring.
    let page = page_bytes();
    let region = crate::transport::bufring::Mmap::new(page)
        .map_err(|e| missing("provided buffer ring", "5.19", format!("mmap: {e}")))?;
    // SAFETY: `region` is page-aligned, `page` bytes long (>= 1 entry of 16 bytes), and
    // outlives the registration: it is unregistered below before `region` drops.
    let reg = unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(region.addr() as u64, 1, 0, 0)
    };
    match reg {
        Ok(()) => {
            let _ = ring.submitter().unregister_buf_ring(0);
        }
        Err(e) => {
            return Err(missing(
                "provided buffer ring (IORING_REGISTER_PBUF_RING)",
                "5.19",
                e.to_string(),
            ));
        }
    }
    drop(ring);
    // Multishot recvmsg and send-with-address have no probe of their own: the kernel checks
    // them at submission. The transport's first submission reports EINVAL with this hint
    // (see `UdpRing::add_socket`); here we check the version that introduced them so the
    // failure comes at start-up, before any socket exists.
    if !version_at_least(&kernel, 6, 0) {
        return Err(missing(
            "multishot recvmsg (IORING_RECV_MULTISHOT)",
            "6.0",
            String::new(),
        ));
    }
    let defer_taskrun = IoUring::<io_uring::squeue::Entry, io_uring::cqueue::Entry>::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(8)
        .is_ok();
    Ok(Features {
        kernel,
        defer_taskrun,
        udp_gso: udp_option_works(libc::UDP_SEGMENT),
    })
}

/// Whether setting the UDP-level socket option `name` to 0 works on a scratch socket (the
/// kernel answers ENOPROTOOPT for options it does not know).
fn udp_option_works(name: libc::c_int) -> bool {
    let Ok(socket) = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    ) else {
        return false;
    };
    let zero: libc::c_int = 0;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live c_int, on a
    // descriptor `socket` owns for the duration of the call.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_UDP,
            name,
            (&zero as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

/// Whether `release` ("6.18.44-foo") is at least `major.minor`. Unknown formats pass: the
/// kernel's own answer at submission time is the final word.
pub fn version_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let maj = parts.next().and_then(|p| p.parse::<u32>().ok());
    let min = parts.next().and_then(|p| p.parse::<u32>().ok());
    match (maj, min) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => true,
    }
}

/// The system page size.
pub fn page_bytes() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n <= 0 { 4096 } else { n as usize }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare() {
        assert!(version_at_least("6.18.44-fc-v782", 6, 0));
        assert!(version_at_least("6.0.0", 6, 0));
        assert!(!version_at_least("5.19.2", 6, 0));
        assert!(!version_at_least("5.4", 5, 19));
        assert!(version_at_least("weird", 6, 0));
    }

    #[test]
    fn missing_feature_names_the_version() {
        let m = MissingFeature {
            feature: "multishot recvmsg",
            since: "6.0",
            kernel: "5.15.0".into(),
            detail: String::new(),
        };
        let text = m.to_string();
        assert!(
            text.contains("multishot recvmsg")
                && text.contains("Linux 6.0")
                && text.contains("5.15.0")
        );
    }
}

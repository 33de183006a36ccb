//! Same-run denominators: raw loopback UDP (ping-pong RTT and sendmmsg/recvmmsg flood), raw
//! `fdatasync` of 4 KiB appends, raw loopback TCP bulk throughput.
//!
//! Every performance claim of Ringleader is a ratio against one of these, measured in the same
//! run. They use the plainest code the OS offers (blocking sockets, one thread per side) and
//! must never touch Ringleader's own engine. Loopback (127.0.0.1) only.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use socket2::{Domain, Protocol, Socket, Type};

use super::args::Pacing;
use super::load::{OpenLoop, SystemClock, drive};
use super::recorder::Recorder;
use super::run::Progress;

/// Size of one ping-pong datagram.
pub const PING_BYTES: usize = 64;
/// Datagrams per sendmmsg/recvmmsg call in the flood.
pub const UDP_BATCH: usize = 32;
/// Size of one flood datagram.
pub const FLOOD_BYTES: usize = 64;
/// Socket buffer size asked for on every UDP socket (the kernel may cap it).
pub const UDP_SOCKET_BUFFER_BYTES: usize = 4 << 20;
/// How long a blocked receive waits before checking whether to stop.
pub const RECV_TIMEOUT: Duration = Duration::from_millis(100);
/// How many times a ping is re-sent before the echo is declared gone.
pub const PING_TRIES_MAX: u32 = 20;
/// Size of one fdatasync append.
pub const FDATASYNC_APPEND_BYTES: usize = 4096;
/// The fdatasync file is truncated back to empty when it reaches this size (bounds disk use
/// on fast devices such as tmpfs).
pub const FDATASYNC_FILE_BYTES_MAX: u64 = 64 << 20;
/// Size of one TCP write and read.
pub const TCP_CHUNK_BYTES: usize = 256 << 10;

/// How long and how hard to run one baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaselineConfig {
    /// Measured time.
    pub duration: Duration,
    /// Unrecorded time before it.
    pub warmup: Duration,
    /// UDP ping-pong pacing (the other baselines are throughput and ignore it).
    pub pacing: Pacing,
}

impl BaselineConfig {
    /// `duration` with the default warm-up (a tenth of it, at most 200 ms), closed loop.
    pub fn new(duration: Duration) -> Self {
        BaselineConfig {
            duration,
            warmup: (duration / 10).min(Duration::from_millis(200)),
            pacing: Pacing::Closed { concurrency: 1 },
        }
    }
}

fn tick(progress: Option<&Progress>, since: Instant) {
    if let Some(p) = progress {
        p.tick(since.elapsed());
    }
}

fn udp_socket(bind: SocketAddr) -> anyhow::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Larger buffers are a request; the kernel caps them at net.core.[rw]mem_max.
    let _ = socket.set_recv_buffer_size(UDP_SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_SOCKET_BUFFER_BYTES);
    socket.bind(&bind.into())?;
    let socket: UdpSocket = socket.into();
    socket.set_read_timeout(Some(RECV_TIMEOUT))?;
    Ok(socket)
}

fn loopback_any_port() -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// 64-B ping-pong RTT on loopback, one client and one echo thread, closed loop; µs.
pub fn udp_rtt(duration: Duration) -> anyhow::Result<Recorder> {
    udp_rtt_with(&BaselineConfig::new(duration), None)
}

/// [`udp_rtt`] with explicit warm-up and pacing (open loop at a rate, or N closed-loop
/// clients sharing one echo thread).
pub fn udp_rtt_with(
    config: &BaselineConfig,
    progress: Option<&Progress>,
) -> anyhow::Result<Recorder> {
    let echo = udp_socket(loopback_any_port()).context("binding the echo socket")?;
    let echo_addr = echo.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let echo_thread = {
        let stop = Arc::clone(&stop);
        thread::Builder::new()
            .name("udp-echo".into())
            .spawn(move || -> io::Result<u64> {
                let mut buf = [0u8; 2048];
                let mut echoed_count = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match echo.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            echo.send_to(&buf[..n], from)?;
                            echoed_count += 1;
                        }
                        Err(e) if is_timeout(&e) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(echoed_count)
            })?
    };
    let result = run_ping_clients(config, echo_addr, progress);
    stop.store(true, Ordering::Relaxed);
    let echo_result = echo_thread.join();
    let rec = result?;
    match echo_result {
        Ok(Ok(_)) => Ok(rec),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context("udp echo thread")),
        Err(_) => bail!("udp echo thread panicked"),
    }
}

fn run_ping_clients(
    config: &BaselineConfig,
    echo_addr: SocketAddr,
    progress: Option<&Progress>,
) -> anyhow::Result<Recorder> {
    let start = Instant::now();
    let measure_start = start + config.warmup;
    let end = measure_start + config.duration;
    match config.pacing {
        Pacing::Open { rate_per_s } => {
            let mut client = PingClient::new(echo_addr)?;
            let mut warm = Recorder::new("udp_rtt_warmup_us");
            drive(&mut SystemClock, None, measure_start, &mut warm, |_| {
                client.ping()
            })?;
            let mut rec = Recorder::new("udp_rtt_us");
            let mut open = OpenLoop::new(rate_per_s, Instant::now());
            let mut last_tick = Instant::now();
            drive(&mut SystemClock, Some(&mut open), end, &mut rec, |_| {
                if last_tick.elapsed() > Duration::from_millis(100) {
                    last_tick = Instant::now();
                    tick(progress, measure_start);
                }
                client.ping()
            })?;
            Ok(rec)
        }
        Pacing::Closed { concurrency } => {
            let clients: Vec<_> = (0..concurrency.max(1))
                .map(|i| {
                    let mut client = PingClient::new(echo_addr)?;
                    thread::Builder::new()
                        .name(format!("udp-ping-{i}"))
                        .spawn(move || -> anyhow::Result<Recorder> {
                            let mut warm = Recorder::new("udp_rtt_warmup_us");
                            drive(&mut SystemClock, None, measure_start, &mut warm, |_| {
                                client.ping()
                            })?;
                            let mut rec = Recorder::new("udp_rtt_us");
                            drive(&mut SystemClock, None, end, &mut rec, |_| client.ping())?;
                            Ok(rec)
                        })
                        .map_err(anyhow::Error::from)
                })
                .collect::<anyhow::Result<_>>()?;
            // Progress from this thread while the clients run.
            while Instant::now() < end {
                tick(progress, measure_start);
                thread::sleep(
                    Duration::from_millis(100).min(end.saturating_duration_since(Instant::now())),
                );
            }
            let mut rec = Recorder::new("udp_rtt_us");
            for client in clients {
                match client.join() {
                    Ok(Ok(r)) => rec.merge(&r),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => bail!("udp ping client panicked"),
                }
            }
            Ok(rec)
        }
    }
}

struct PingClient {
    socket: UdpSocket,
    buf: [u8; PING_BYTES],
    reply: [u8; 2048],
    seq: u64,
}

impl PingClient {
    fn new(echo_addr: SocketAddr) -> anyhow::Result<PingClient> {
        let socket = udp_socket(loopback_any_port())?;
        socket.connect(echo_addr)?;
        Ok(PingClient {
            socket,
            buf: [0u8; PING_BYTES],
            reply: [0u8; 2048],
            seq: 0,
        })
    }

    /// One round trip; re-sends after a receive timeout, ignores stale replies.
    fn ping(&mut self) -> anyhow::Result<()> {
        self.seq += 1;
        self.buf[..8].copy_from_slice(&self.seq.to_le_bytes());
        for _ in 0..PING_TRIES_MAX {
            self.socket.send(&self.buf)?;
            loop {
                match self.socket.recv(&mut self.reply) {
                    Ok(n) if n >= 8 && self.reply[..8] == self.buf[..8] => return Ok(()),
                    Ok(_) => continue, // A late reply to an earlier, re-sent ping.
                    Err(e) if is_timeout(&e) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        bail!("the udp echo did not answer {PING_TRIES_MAX} pings in a row")
    }
}

/// What the UDP flood measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FloodReport {
    /// Datagrams received per second during the measured time.
    pub received_pps: f64,
    /// Datagrams handed to the kernel per second during the measured time.
    pub sent_pps: f64,
}

/// One-way loopback flood of 64-B datagrams with sendmmsg/recvmmsg batches of 32: datagrams
/// received per second.
pub fn udp_flood_pps(duration: Duration) -> anyhow::Result<f64> {
    Ok(udp_flood_with(&BaselineConfig::new(duration), None)?.received_pps)
}

/// [`udp_flood_pps`] with an explicit warm-up, reporting both sides.
pub fn udp_flood_with(
    config: &BaselineConfig,
    progress: Option<&Progress>,
) -> anyhow::Result<FloodReport> {
    let rx = udp_socket(loopback_any_port()).context("binding the flood receiver")?;
    let tx = udp_socket(loopback_any_port()).context("binding the flood sender")?;
    tx.connect(rx.local_addr()?)?;
    let start = Instant::now();
    let measure_start = start + config.warmup;
    let end = measure_start + config.duration;
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let stop = Arc::clone(&stop);
        thread::Builder::new()
            .name("udp-flood-rx".into())
            .spawn(move || -> io::Result<u64> {
                let mut batch = MmsgBatch::new(FLOOD_BYTES);
                let mut received_count = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match batch.recv(&rx) {
                        Ok(n) => {
                            let now = Instant::now();
                            if now >= measure_start && now < end {
                                received_count += n as u64;
                            }
                        }
                        Err(e) if is_timeout(&e) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(received_count)
            })?
    };
    let send_result = (|| -> io::Result<u64> {
        let mut batch = MmsgBatch::new(FLOOD_BYTES);
        let mut sent_count = 0u64;
        let mut batches = 0u64;
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            match batch.send(&tx) {
                Ok(n) if now >= measure_start => sent_count += n as u64,
                Ok(_) => {}
                // A full queue: the receiver is behind; let it run.
                Err(e) if is_timeout(&e) || e.raw_os_error() == Some(libc::ENOBUFS) => {
                    thread::yield_now()
                }
                Err(e) => return Err(e),
            }
            batches += 1;
            if batches % 1024 == 0 {
                tick(progress, measure_start);
            }
        }
        Ok(sent_count)
    })();
    // Let in-flight datagrams land before stopping the receiver (they are not counted: `end`).
    stop.store(true, Ordering::Relaxed);
    let received = receiver.join();
    let sent_count = send_result.context("udp flood sender")?;
    let received_count = match received {
        Ok(r) => r.context("udp flood receiver")?,
        Err(_) => bail!("udp flood receiver panicked"),
    };
    let secs = config.duration.as_secs_f64().max(1e-9);
    Ok(FloodReport {
        received_pps: received_count as f64 / secs,
        sent_pps: sent_count as f64 / secs,
    })
}

/// Buffers and headers of one sendmmsg/recvmmsg batch.
///
/// The `mmsghdr`s point into `iovecs`, which point into `buffers`; all three are boxed slices
/// that are never resized or moved out of, so the pointers stay valid while `self` lives.
struct MmsgBatch {
    _buffers: Box<[u8]>,
    _iovecs: Box<[libc::iovec]>,
    headers: Box<[libc::mmsghdr]>,
}

impl MmsgBatch {
    fn new(datagram_bytes: usize) -> MmsgBatch {
        let mut buffers = vec![0u8; datagram_bytes * UDP_BATCH].into_boxed_slice();
        let mut iovecs: Box<[libc::iovec]> = buffers
            .chunks_exact_mut(datagram_bytes)
            .map(|chunk| libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: chunk.len(),
            })
            .collect();
        let headers: Box<[libc::mmsghdr]> = iovecs
            .iter_mut()
            .map(|iov| {
                // SAFETY: mmsghdr is plain data (integers and raw pointers); all-zero is a valid
                // value (null name, no control data, no flags).
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        MmsgBatch {
            _buffers: buffers,
            _iovecs: iovecs,
            headers,
        }
    }

    fn send(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        // SAFETY: `headers` holds UDP_BATCH valid mmsghdrs whose iovecs point at live buffers
        // (see the struct invariant); the socket is connected, so no address is needed.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                self.headers.len() as u32,
                0,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        // SAFETY: as in `send`; the kernel writes at most iov_len bytes into each buffer and
        // sets msg_len. MSG_WAITFORONE returns as soon as one datagram is there, and the
        // socket's receive timeout bounds the wait for the first.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                self.headers.len() as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// Removes the file when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Latency of `write(4 KiB)` + `fdatasync` appends to a fresh file in `dir`; µs.
pub fn fdatasync_latency(dir: &Path, duration: Duration) -> anyhow::Result<Recorder> {
    fdatasync_latency_with(dir, &BaselineConfig::new(duration), None)
}

/// [`fdatasync_latency`] with an explicit warm-up.
pub fn fdatasync_latency_with(
    dir: &Path,
    config: &BaselineConfig,
    progress: Option<&Progress>,
) -> anyhow::Result<Recorder> {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let path = dir.join(format!(
        ".ringleader-fdatasync-{}-{nonce}.dat",
        std::process::id()
    ));
    let file: File = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let _cleanup = RemoveOnDrop(path.clone());
    let block = [0xA5u8; FDATASYNC_APPEND_BYTES];
    let mut offset = 0u64;
    let mut append = |file: &File| -> io::Result<()> {
        if offset >= FDATASYNC_FILE_BYTES_MAX {
            file.set_len(0)?;
            offset = 0;
        }
        file.write_all_at(&block, offset)?;
        file.sync_data()?;
        offset += FDATASYNC_APPEND_BYTES as u64;
        Ok(())
    };
    let start = Instant::now();
    let measure_start = start + config.warmup;
    let end = measure_start + config.duration;
    while Instant::now() < measure_start {
        append(&file).with_context(|| format!("appending to {}", path.display()))?;
    }
    let mut rec = Recorder::new("fdatasync_us");
    loop {
        let before = Instant::now();
        if before >= end {
            break;
        }
        append(&file).with_context(|| format!("appending to {}", path.display()))?;
        let after = Instant::now();
        rec.record_duration_at(after, after - before);
        tick(progress, measure_start);
    }
    Ok(rec)
}

/// What the TCP bulk transfer measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TcpReport {
    /// Gigabits per second received during the measured time.
    pub gbps: f64,
    /// Bytes received during the measured time.
    pub received_bytes: u64,
}

/// Loopback TCP bulk transfer, one connection, 256 KiB writes: gigabits per second.
pub fn tcp_gbps(duration: Duration) -> anyhow::Result<f64> {
    Ok(tcp_bulk_with(&BaselineConfig::new(duration), None)?.gbps)
}

/// [`tcp_gbps`] with an explicit warm-up.
pub fn tcp_bulk_with(
    config: &BaselineConfig,
    progress: Option<&Progress>,
) -> anyhow::Result<TcpReport> {
    let listener = TcpListener::bind(loopback_any_port()).context("binding the tcp listener")?;
    let addr = listener.local_addr()?;
    let start = Instant::now();
    let measure_start = start + config.warmup;
    let end = measure_start + config.duration;
    let receiver =
        thread::Builder::new()
            .name("tcp-rx".into())
            .spawn(move || -> io::Result<u64> {
                let (mut stream, _) = listener.accept()?;
                let mut buf = vec![0u8; TCP_CHUNK_BYTES];
                let mut received_bytes = 0u64;
                loop {
                    let n = match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    };
                    let now = Instant::now();
                    if now >= measure_start && now < end {
                        received_bytes += n as u64;
                    }
                }
                Ok(received_bytes)
            })?;
    let send_result = (|| -> io::Result<()> {
        let mut stream = TcpStream::connect(addr)?;
        let chunk = vec![0x5Au8; TCP_CHUNK_BYTES];
        let mut writes = 0u64;
        while Instant::now() < end {
            stream.write_all(&chunk)?;
            writes += 1;
            if writes % 64 == 0 {
                tick(progress, measure_start);
            }
        }
        stream.shutdown(std::net::Shutdown::Write)
    })();
    if send_result.is_err() {
        // The receiver may still be blocked in accept(): hand it a connection that closes at
        // once, so that it reads EOF and the join below returns.
        let _ = TcpStream::connect(addr);
    }
    let received = receiver.join();
    send_result.context("tcp sender")?;
    let received_bytes = match received {
        Ok(r) => r.context("tcp receiver")?,
        Err(_) => bail!("tcp receiver panicked"),
    };
    let secs = config.duration.as_secs_f64().max(1e-9);
    Ok(TcpReport {
        gbps: received_bytes as f64 * 8.0 / secs / 1e9,
        received_bytes,
    })
}

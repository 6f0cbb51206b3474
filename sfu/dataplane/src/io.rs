//! The worker's media socket and its thread: `recvmmsg` batches in, `Worker::handle` per datagram,
//! `sendmmsg` batches out, `Worker::tick` every few milliseconds.
//!
//! The control plane (Python) reaches the `Worker` through the same mutex, held by this thread only
//! while a received batch is processed; what it must hear is signalled on an eventfd it watches, so
//! its event loop wakes once per batch that produced events, never per packet.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::worker::{Outbox, Worker, MAX_DATAGRAM};

/// Datagrams received (and sent) per system call at most.
pub const BATCH: usize = 64;
/// Receive buffer per datagram: larger than `MAX_DATAGRAM` so an oversized one is seen as such.
const SLOT: usize = 2048;
/// Timed work runs at least this often.
const TICK_MS: i64 = 10;

/// The worker's socket, its thread and the shared state.
pub struct Engine {
    worker: Arc<Mutex<Worker>>,
    socket: Arc<UdpSocket>,
    stop: Arc<AtomicBool>,
    event_fd: RawFd,
    started: Instant,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn lock(worker: &Mutex<Worker>) -> MutexGuard<'_, Worker> {
    // A panic in the I/O thread must not make every control call panic too: the state is still
    // consistent between datagrams, so keep using it.
    worker.lock().unwrap_or_else(|e| e.into_inner())
}

impl Engine {
    /// Bind `addr` (port 0: any free port) and start the I/O thread.
    pub fn start(addr: SocketAddr) -> io::Result<Engine> {
        let socket = UdpSocket::bind(addr)?;
        socket.set_read_timeout(Some(Duration::from_millis(TICK_MS as u64)))?;
        set_buffer_sizes(socket.as_raw_fd(), 4 << 20);
        let event_fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if event_fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let started = Instant::now();
        let mut worker = Worker::new();
        let unix_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        worker.set_wall_offset(unix_now);
        let worker = Arc::new(Mutex::new(worker));
        let socket = Arc::new(socket);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (worker, socket, stop) = (worker.clone(), socket.clone(), stop.clone());
            std::thread::Builder::new()
                .name("voxa-dataplane".into())
                .spawn(move || run(&worker, &socket, &stop, event_fd, started))?
        };
        Ok(Engine {
            worker,
            socket,
            stop,
            event_fd,
            started,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Milliseconds on the engine's monotonic clock (the clock every `Worker` call uses).
    pub fn now_ms(&self) -> i64 {
        self.started.elapsed().as_millis() as i64
    }

    /// The eventfd that becomes readable when events are waiting (`with_worker` → `take_events`).
    pub fn event_fd(&self) -> RawFd {
        self.event_fd
    }

    /// Clear the eventfd's readiness (call before taking events, so none is missed).
    pub fn ack_events(&self) {
        let mut value = 0u64;
        unsafe {
            libc::read(
                self.event_fd,
                &mut value as *mut u64 as *mut libc::c_void,
                8,
            );
        }
    }

    pub fn with_worker<T>(&self, f: impl FnOnce(&mut Worker, i64) -> T) -> T {
        let now = self.now_ms();
        let mut w = lock(&self.worker);
        f(&mut w, now)
    }

    /// Send one datagram now (DTLS records from the control plane).
    pub fn send_to(&self, data: &[u8], addr: SocketAddr) -> io::Result<usize> {
        self.socket.send_to(data, addr)
    }

    pub fn close(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.close();
        unsafe {
            libc::close(self.event_fd);
        }
    }
}

fn set_buffer_sizes(fd: RawFd, bytes: libc::c_int) {
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &bytes as *const _ as *const libc::c_void,
                size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

fn to_socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            let a = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            let a = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn from_socket_addr(addr: &SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let s = unsafe { &mut *(storage as *mut _ as *mut libc::sockaddr_in) };
            s.sin_family = libc::AF_INET as libc::sa_family_t;
            s.sin_port = a.port().to_be();
            s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let s = unsafe { &mut *(storage as *mut _ as *mut libc::sockaddr_in6) };
            s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            s.sin6_port = a.port().to_be();
            s.sin6_addr.s6_addr = a.ip().octets();
            s.sin6_flowinfo = a.flowinfo();
            s.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Reused `recvmmsg` state: buffers, addresses, headers.
pub(crate) struct RecvBatch {
    bufs: Vec<[u8; SLOT]>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    pub(crate) fn new() -> Box<RecvBatch> {
        let mut b = Box::new(RecvBatch {
            bufs: vec![[0u8; SLOT]; BATCH],
            addrs: vec![unsafe { zeroed() }; BATCH],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                BATCH
            ],
            msgs: vec![unsafe { zeroed() }; BATCH],
        });
        for i in 0..BATCH {
            b.iovs[i] = libc::iovec {
                iov_base: b.bufs[i].as_mut_ptr() as *mut libc::c_void,
                iov_len: SLOT,
            };
        }
        b
    }

    /// Datagram `i` of the last `receive` (None if its source is unreadable or it was truncated).
    pub(crate) fn get(&self, i: usize) -> Option<(SocketAddr, &[u8])> {
        let m = &self.msgs[i];
        if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            return None;
        }
        Some((
            to_socket_addr(&self.addrs[i])?,
            &self.bufs[i][..m.msg_len as usize],
        ))
    }

    fn reset(&mut self) {
        for i in 0..BATCH {
            let m = &mut self.msgs[i];
            m.msg_hdr.msg_name = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
            m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            m.msg_hdr.msg_iov = &mut self.iovs[i];
            m.msg_hdr.msg_iovlen = 1;
            m.msg_hdr.msg_control = std::ptr::null_mut();
            m.msg_hdr.msg_controllen = 0;
            m.msg_hdr.msg_flags = 0;
            m.msg_len = 0;
        }
    }

    /// Wait for at least one datagram (up to the socket's read timeout), then take what is there.
    pub(crate) fn receive(&mut self, fd: RawFd) -> usize {
        self.reset();
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            0
        } else {
            n as usize
        }
    }
}

/// Reused `sendmmsg` state.
pub(crate) struct SendBatch {
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

impl SendBatch {
    pub(crate) fn new() -> SendBatch {
        SendBatch {
            addrs: vec![unsafe { zeroed() }; BATCH],
            iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                BATCH
            ],
            msgs: vec![unsafe { zeroed() }; BATCH],
        }
    }

    /// Send everything in `out` (in batches of `BATCH`); returns how many datagrams the kernel took.
    pub(crate) fn send(&mut self, fd: RawFd, out: &Outbox) -> u64 {
        let mut sent = 0u64;
        let mut start = 0;
        while start < out.len() {
            let count = (out.len() - start).min(BATCH);
            for i in 0..count {
                let (addr, data) = out.get(start + i);
                let len = from_socket_addr(addr, &mut self.addrs[i]);
                self.iovs[i] = libc::iovec {
                    iov_base: data.as_ptr() as *mut libc::c_void,
                    iov_len: data.len(),
                };
                let m = &mut self.msgs[i];
                m.msg_hdr.msg_name = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
                m.msg_hdr.msg_namelen = len;
                m.msg_hdr.msg_iov = &mut self.iovs[i];
                m.msg_hdr.msg_iovlen = 1;
                m.msg_hdr.msg_control = std::ptr::null_mut();
                m.msg_hdr.msg_controllen = 0;
                m.msg_hdr.msg_flags = 0;
            }
            let mut done = 0;
            while done < count {
                let n = unsafe {
                    libc::sendmmsg(
                        fd,
                        self.msgs[done..].as_mut_ptr(),
                        (count - done) as libc::c_uint,
                        0,
                    )
                };
                if n <= 0 {
                    // The first datagram of the rest failed (e.g. ECONNREFUSED from an ICMP of an
                    // earlier send, or a full buffer): skip it, keep the others.
                    done += 1;
                } else {
                    done += n as usize;
                    sent += n as u64;
                }
            }
            start += count;
        }
        sent
    }
}

fn run(
    worker: &Mutex<Worker>,
    socket: &UdpSocket,
    stop: &AtomicBool,
    event_fd: RawFd,
    started: Instant,
) {
    let fd = socket.as_raw_fd();
    let mut recv = RecvBatch::new();
    let mut send = SendBatch::new();
    let mut out = Outbox::new();
    let mut next_tick = 0i64;
    while !stop.load(Ordering::Relaxed) {
        let n = recv.receive(fd);
        let now = started.elapsed().as_millis() as i64;
        let signal;
        {
            let mut w = lock(worker);
            let had = w.has_events();
            for i in 0..n {
                let m = &recv.msgs[i];
                let len = m.msg_len as usize;
                let Some(from) = to_socket_addr(&recv.addrs[i]) else {
                    continue;
                };
                if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len > MAX_DATAGRAM {
                    w.counters.rx_datagrams += 1;
                    w.counters.oversized += 1;
                    continue;
                }
                w.handle(from, &recv.bufs[i][..len], now, &mut out);
            }
            if now >= next_tick {
                next_tick = now + TICK_MS;
                w.tick(now, &mut out);
            }
            signal = !had && w.has_events();
        }
        if !out.is_empty() {
            let sent = send.send(fd, &out);
            lock(worker).counters.tx_datagrams += sent;
            out.clear();
        }
        if signal {
            let one = 1u64;
            unsafe {
                libc::write(event_fd, &one as *const u64 as *const libc::c_void, 8);
            }
        }
    }
}

/// Parse "a.b.c.d/n" or "v6/n" (no prefix: a host).
pub fn parse_network(text: &str) -> Option<crate::worker::Network> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, p.parse::<u8>().ok()?),
        None => (text, if text.contains(':') { 128 } else { 32 }),
    };
    let addr: IpAddr = addr.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some(crate::worker::Network { addr, prefix })
}

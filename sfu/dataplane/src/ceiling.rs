//! The benchmark's ceiling: the crate's minimal forwarder, the practical limit of a machine.
//!
//! No routing logic, no RTCP, no ICE: one socket receives SRTP from the publishers, unprotects each
//! packet once, and for a fixed fan-out rewrites SSRC and sequence number, protects and sends it,
//! with the same `recvmmsg`/`sendmmsg` batching and the same SRTP code as the real data plane.
//! Publishers (paced in real time) and subscribers (counting) run on other threads, so the figure
//! is forwarded packets per CPU-second of the forwarder thread alone (the kernel's loopback delivery
//! into the subscribers' sockets included, as it is for the SFU process).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::io::{RecvBatch, SendBatch};
use crate::srtp::Session;
use crate::worker::Outbox;

/// The load shape: rooms of `peers_per_room`, of which `publishers_per_room` send; every publisher
/// is forwarded to the other peers of its room.
#[derive(Debug, Clone)]
pub struct Load {
    pub rooms: usize,
    pub peers_per_room: usize,
    pub publishers_per_room: usize,
    pub packets_per_s: u32,
    pub payload_bytes: usize,
    pub seconds: f64,
    pub forwarder_core: Option<usize>,
    pub load_core: Option<usize>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    pub sent: u64,
    pub forwarded: u64,
    pub received: u64,
    pub forwarder_cpu_s: f64,
    pub elapsed_s: f64,
}

impl Outcome {
    /// Forwarded packets per CPU-second of the forwarder.
    pub fn pps_per_core(&self) -> f64 {
        if self.forwarder_cpu_s > 0.0 {
            self.forwarded as f64 / self.forwarder_cpu_s
        } else {
            0.0
        }
    }
}

const KEY: [u8; 16] = [7; 16];
const SALT: [u8; 14] = [9; 14];

fn session() -> Session {
    Session::from_keys(1, &KEY, &SALT, &KEY, &SALT).expect("static keys are valid")
}

fn pin(core: Option<usize>) {
    if let Some(core) = core {
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(core, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn loopback_socket() -> io::Result<UdpSocket> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    let size: libc::c_int = 4 << 20;
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &size as *const _ as *const libc::c_void,
                4,
            );
        }
    }
    Ok(s)
}

/// Run the minimal forwarder under `load` and measure it.
pub fn run(load: &Load) -> io::Result<Outcome> {
    let rooms = load.rooms.max(1);
    let ppr = load.peers_per_room.max(2);
    let pubs = load.publishers_per_room.clamp(1, ppr);
    let forwarder = loopback_socket()?;
    forwarder.set_read_timeout(Some(Duration::from_millis(20)))?;
    let forwarder_addr = forwarder.local_addr()?;
    // Every peer has a socket: publishers send from theirs, everyone receives on theirs.
    let mut peers = Vec::with_capacity(rooms * ppr);
    for _ in 0..rooms * ppr {
        let s = loopback_socket()?;
        s.set_nonblocking(true)?;
        peers.push(s);
    }
    let addrs: Vec<SocketAddr> = peers
        .iter()
        .map(|s| s.local_addr())
        .collect::<io::Result<_>>()?;
    // publisher (by source port) -> fan-out destinations
    let mut routes: std::collections::HashMap<SocketAddr, (usize, Vec<SocketAddr>)> =
        Default::default();
    for room in 0..rooms {
        for p in 0..pubs {
            let me = room * ppr + p;
            let others = (0..ppr)
                .filter(|&i| i != p)
                .map(|i| addrs[room * ppr + i])
                .collect();
            routes.insert(addrs[me], (me, others));
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let forwarded = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));

    let fwd = {
        let (stop, forwarded) = (stop.clone(), forwarded.clone());
        let core = load.forwarder_core;
        std::thread::spawn(move || -> f64 { forward(&forwarder, &routes, &stop, &forwarded, core) })
    };
    let receivers: Vec<UdpSocket> = peers
        .iter()
        .map(|s| s.try_clone())
        .collect::<io::Result<_>>()?;
    let rx = {
        let (stop, received) = (stop.clone(), received.clone());
        let core = load.load_core;
        std::thread::spawn(move || receive(&receivers, &stop, &received, core))
    };
    let senders: Vec<UdpSocket> = (0..rooms)
        .flat_map(|room| (0..pubs).map(move |p| room * ppr + p))
        .map(|i| peers[i].try_clone())
        .collect::<io::Result<_>>()?;
    let started = Instant::now();
    {
        let (stop, sent) = (stop.clone(), sent.clone());
        let (pps, payload, seconds, core) = (
            load.packets_per_s.max(1),
            load.payload_bytes,
            load.seconds,
            load.load_core,
        );
        std::thread::spawn(move || {
            publish(&senders, forwarder_addr, pps, payload, seconds, &sent, core)
        })
        .join()
        .ok();
        // let the last packets through, then stop
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::SeqCst);
    }
    let cpu = fwd.join().unwrap_or(0.0);
    let _ = rx.join();
    Ok(Outcome {
        sent: sent.load(Ordering::SeqCst),
        forwarded: forwarded.load(Ordering::SeqCst),
        received: received.load(Ordering::SeqCst),
        forwarder_cpu_s: cpu,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

fn publish(
    senders: &[UdpSocket],
    to: SocketAddr,
    pps: u32,
    payload: usize,
    seconds: f64,
    sent: &AtomicU64,
    core: Option<usize>,
) {
    pin(core);
    let mut tx: Vec<Session> = senders.iter().map(|_| session()).collect();
    let interval = Duration::from_secs_f64(1.0 / pps as f64);
    let start = Instant::now();
    let mut plain = vec![0u8; 12 + payload];
    plain[0] = 0x80;
    plain[1] = 111;
    let mut sealed = Vec::with_capacity(1500);
    let mut tick = 0u32;
    while start.elapsed().as_secs_f64() < seconds {
        let seq = tick as u16;
        for (i, s) in senders.iter().enumerate() {
            plain[2..4].copy_from_slice(&seq.to_be_bytes());
            plain[4..8].copy_from_slice(&(tick.wrapping_mul(960)).to_be_bytes());
            plain[8..12].copy_from_slice(&(i as u32 + 1).to_be_bytes());
            if tx[i].protect_rtp(&plain, &mut sealed).is_ok() && s.send_to(&sealed, to).is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        tick += 1;
        let due = interval * tick;
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

fn receive(sockets: &[UdpSocket], stop: &AtomicBool, received: &AtomicU64, core: Option<usize>) {
    pin(core);
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20) };
        if n <= 0 {
            continue;
        }
        for (i, fd) in fds.iter_mut().enumerate() {
            if fd.revents & libc::POLLIN != 0 {
                while sockets[i].recv(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
            fd.revents = 0;
        }
    }
}

fn forward(
    socket: &UdpSocket,
    routes: &std::collections::HashMap<SocketAddr, (usize, Vec<SocketAddr>)>,
    stop: &AtomicBool,
    forwarded: &AtomicU64,
    core: Option<usize>,
) -> f64 {
    pin(core);
    let cpu0 = thread_cpu_s();
    let fd = socket.as_raw_fd();
    let n_peers = routes.values().map(|(i, _)| *i).max().unwrap_or(0) + 1;
    let mut rx: Vec<Session> = (0..n_peers).map(|_| session()).collect();
    let mut tx: Vec<Session> = (0..n_peers).map(|_| session()).collect();
    let mut out_seq = vec![0u16; n_peers];
    let mut out = Outbox::new();
    let mut send = SendBatch::new();
    let mut recv = RecvBatch::new();
    let mut plain = Vec::with_capacity(1500);
    let mut rewritten = Vec::with_capacity(1500);
    let mut count = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let n = recv.receive(fd);
        for i in 0..n {
            let Some((from, data)) = recv.get(i) else {
                continue;
            };
            let Some((me, dests)) = routes.get(&from) else {
                continue;
            };
            if rx[*me].unprotect_rtp(data, &mut plain).is_err() {
                continue;
            }
            for (k, dest) in dests.iter().enumerate() {
                rewritten.clear();
                rewritten.extend_from_slice(&plain);
                let slot = (*me + k + 1) % n_peers;
                out_seq[slot] = out_seq[slot].wrapping_add(1);
                rewritten[2..4].copy_from_slice(&out_seq[slot].to_be_bytes());
                rewritten[8..12].copy_from_slice(&(0x1000_0000u32 + slot as u32).to_be_bytes());
                let buf = out.next(*dest);
                if tx[slot].protect_rtp(&rewritten, buf).is_err() {
                    out.cancel();
                }
            }
        }
        if !out.is_empty() {
            count += send.send(fd, &out);
            out.clear();
        }
    }
    forwarded.store(count, Ordering::SeqCst);
    thread_cpu_s() - cpu0
}

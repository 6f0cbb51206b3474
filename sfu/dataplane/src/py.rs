//! The Python extension module `voxa_dataplane`: thin typed wrappers over the pure modules.
//!
//! Errors become `ValueError` with the module's message; nothing here runs per packet on the
//! forwarding path except what the wrapped module does.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use std::net::SocketAddr;

use pyo3::exceptions::{PyKeyError, PyOSError, PyRuntimeError};
use pyo3::types::{PyDict, PyList};

use crate::classify::{classify as classify_datagram, Kind};
use crate::codecs::VideoCodec;
use crate::io::{parse_network, Engine};
use crate::rtp::Extensions;
use crate::srtp::{keying_material_len, Session};
use crate::worker::{ApiError, ConsumerParams, Event, Preferences, ProducerParams};

fn value_error(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// One peer's SRTP session (both directions), keyed from DTLS-SRTP exporter output.
#[pyclass(name = "SrtpSession", module = "voxa_dataplane", unsendable)]
struct PySrtpSession {
    inner: Session,
    buf: Vec<u8>,
}

#[pymethods]
impl PySrtpSession {
    #[new]
    #[pyo3(signature = (profile, keying_material, is_client))]
    fn new(profile: u16, keying_material: &[u8], is_client: bool) -> PyResult<Self> {
        let inner = Session::from_keying_material(profile, keying_material, is_client)
            .map_err(value_error)?;
        Ok(PySrtpSession {
            inner,
            buf: Vec::with_capacity(1500),
        })
    }

    fn protect_rtp<'py>(
        &mut self,
        py: Python<'py>,
        packet: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        self.inner
            .protect_rtp(packet, &mut self.buf)
            .map_err(value_error)?;
        Ok(PyBytes::new(py, &self.buf))
    }

    fn unprotect_rtp<'py>(
        &mut self,
        py: Python<'py>,
        packet: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        self.inner
            .unprotect_rtp(packet, &mut self.buf)
            .map_err(value_error)?;
        Ok(PyBytes::new(py, &self.buf))
    }

    fn protect_rtcp<'py>(
        &mut self,
        py: Python<'py>,
        packet: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        self.inner
            .protect_rtcp(packet, &mut self.buf)
            .map_err(value_error)?;
        Ok(PyBytes::new(py, &self.buf))
    }

    fn unprotect_rtcp<'py>(
        &mut self,
        py: Python<'py>,
        packet: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        self.inner
            .unprotect_rtcp(packet, &mut self.buf)
            .map_err(value_error)?;
        Ok(PyBytes::new(py, &self.buf))
    }
}

/// Bytes of DTLS exporter output an SRTP protection profile needs.
#[pyfunction]
fn srtp_keying_material_len(profile: u16) -> PyResult<usize> {
    keying_material_len(profile).map_err(value_error)
}

/// "stun", "dtls", "rtp", "rtcp" or "other" (RFC 7983).
#[pyfunction]
fn classify(data: &[u8]) -> &'static str {
    match classify_datagram(data) {
        Kind::Stun => "stun",
        Kind::Dtls => "dtls",
        Kind::Rtp => "rtp",
        Kind::Rtcp => "rtcp",
        Kind::Other => "other",
    }
}

/// The control API's typed errors: not found → KeyError (HTTP 404), conflict → RuntimeError with a
/// "conflict: " prefix (409), invalid → ValueError (400).
fn api_error(e: ApiError) -> PyErr {
    match e {
        ApiError::NotFound(..) => PyKeyError::new_err(e.to_string()),
        ApiError::Conflict(m) => PyRuntimeError::new_err(format!("conflict: {m}")),
        ApiError::Invalid(m) => PyValueError::new_err(m),
    }
}

/// One SFU worker's data plane: its media socket (one UDP port for every peer), its I/O thread and
/// its peers, producers and consumers. Every method is a short call under the worker's lock.
#[pyclass(name = "Worker", module = "voxa_dataplane")]
struct PyWorker {
    engine: Engine,
}

#[pymethods]
impl PyWorker {
    #[new]
    #[pyo3(signature = (listen_ip, port))]
    fn new(listen_ip: &str, port: u16) -> PyResult<Self> {
        let ip = listen_ip
            .parse()
            .map_err(|_| PyValueError::new_err(format!("bad listen address {listen_ip:?}")))?;
        let engine = Engine::start(SocketAddr::new(ip, port))
            .map_err(|e| PyOSError::new_err(format!("cannot bind {listen_ip}:{port}: {e}")))?;
        Ok(PyWorker { engine })
    }

    /// The bound UDP port.
    #[getter]
    fn port(&self) -> PyResult<u16> {
        Ok(self
            .engine
            .local_addr()
            .map_err(|e| PyOSError::new_err(e.to_string()))?
            .port())
    }

    /// Readable when events wait: call `take_events`.
    fn event_fd(&self) -> i32 {
        self.engine.event_fd()
    }

    fn now_ms(&self) -> i64 {
        self.engine.now_ms()
    }

    fn close(&self, py: Python<'_>) {
        py.allow_threads(|| self.engine.close());
    }

    /// Accept connectivity checks only from these networks ("10.0.0.0/8", ...; empty: any).
    fn set_allowed_networks(&self, networks: Vec<String>) -> PyResult<()> {
        let mut parsed = Vec::with_capacity(networks.len());
        for n in &networks {
            parsed.push(
                parse_network(n)
                    .ok_or_else(|| PyValueError::new_err(format!("bad network {n:?}")))?,
            );
        }
        self.engine
            .with_worker(|w, _| w.set_allowed_networks(parsed));
        Ok(())
    }

    /// ("connected", peer, (host, port)), ("dtls", peer, bytes), ("consent_expired", peer, None),
    /// ("layers", producer, wanted_mask), ("layer", consumer, layer).
    fn take_events<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.engine.ack_events();
        let events = self.engine.with_worker(|w, _| w.take_events());
        let list = PyList::empty(py);
        for e in events {
            let item = match e {
                Event::Connected { peer, addr } => (
                    "connected",
                    peer,
                    (addr.ip().to_string(), addr.port())
                        .into_pyobject(py)?
                        .into_any(),
                ),
                Event::Dtls { peer, data } => ("dtls", peer, PyBytes::new(py, &data).into_any()),
                Event::ConsentExpired { peer } => {
                    ("consent_expired", peer, py.None().into_bound(py))
                }
                Event::Layers { producer, mask } => {
                    ("layers", producer, mask.into_pyobject(py)?.into_any())
                }
                Event::Layer { consumer, layer } => {
                    ("layer", consumer, layer.into_pyobject(py)?.into_any())
                }
            };
            list.append(item)?;
        }
        Ok(list)
    }

    fn add_peer(&self, ufrag: &str, pwd: &str) -> PyResult<u32> {
        self.engine
            .with_worker(|w, now| w.add_peer(ufrag.as_bytes(), pwd.as_bytes(), now))
            .map_err(api_error)
    }

    fn remove_peer(&self, peer: u32) -> PyResult<()> {
        self.engine
            .with_worker(|w, _| w.remove_peer(peer))
            .map_err(api_error)
    }

    /// Key the peer's SRTP from the DTLS exporter output (`is_client`: the SFU was the DTLS client).
    fn set_srtp(
        &self,
        peer: u32,
        profile: u16,
        keying_material: &[u8],
        is_client: bool,
    ) -> PyResult<()> {
        let session = Session::from_keying_material(profile, keying_material, is_client)
            .map_err(value_error)?;
        self.engine
            .with_worker(|w, _| w.set_srtp(peer, session))
            .map_err(api_error)
    }

    /// Send a DTLS record to the peer's current address (False if none is known yet).
    fn send_dtls(&self, py: Python<'_>, peer: u32, data: &[u8]) -> PyResult<bool> {
        let addr = self
            .engine
            .with_worker(|w, _| w.dtls_destination(peer))
            .map_err(api_error)?;
        match addr {
            Some(addr) => {
                py.allow_threads(|| self.engine.send_to(data, addr))
                    .map_err(|e| PyOSError::new_err(e.to_string()))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn peer_addr(&self, peer: u32) -> PyResult<Option<(String, u16)>> {
        let addr = self
            .engine
            .with_worker(|w, _| w.peer_addr(peer))
            .map_err(api_error)?;
        Ok(addr.map(|a| (a.ip().to_string(), a.port())))
    }

    /// (rx_packets, tx_packets, srtp_errors)
    fn peer_stats(&self, peer: u32) -> PyResult<(u64, u64, u64)> {
        let s = self
            .engine
            .with_worker(|w, _| w.peer_stats(peer))
            .map_err(api_error)?;
        Ok((s.rx_packets, s.tx_packets, s.srtp_errors))
    }

    /// A published track. `layers`: simulcast layers lowest first, (rid, SSRC or 0 to learn it from
    /// the rid extension, RTX SSRC or 0); `rtx_payload_types`: the publisher's (RTX PT, apt).
    #[pyo3(signature = (peer, *, kind, clock_rate, ssrcs, mid, mid_id=0, audio_level_id=0, codec=None, layers=Vec::new(), rid_id=0, repaired_rid_id=0, rtx_payload_types=Vec::new(), transport_cc_id=0))]
    #[allow(clippy::too_many_arguments)]
    fn add_producer(
        &self,
        peer: u32,
        kind: &str,
        clock_rate: u32,
        ssrcs: Vec<u32>,
        mid: &str,
        mid_id: u8,
        audio_level_id: u8,
        codec: Option<&str>,
        layers: Vec<(String, u32, u32)>,
        rid_id: u8,
        repaired_rid_id: u8,
        rtx_payload_types: Vec<(u8, u8)>,
        transport_cc_id: u8,
    ) -> PyResult<u32> {
        let kind_video = match kind {
            "audio" => false,
            "video" => true,
            other => {
                return Err(PyValueError::new_err(format!(
                    "kind must be audio or video, not {other:?}"
                )))
            }
        };
        let params = ProducerParams {
            kind_video,
            clock_rate,
            ssrcs,
            mid: mid.as_bytes().to_vec(),
            mid_id,
            audio_level_id,
            codec: codec.and_then(VideoCodec::from_name),
            layers: layers
                .into_iter()
                .map(|(rid, ssrc, rtx)| (rid.into_bytes(), ssrc, rtx))
                .collect(),
            rid_id,
            repaired_rid_id,
            rtx_payload_types,
            transport_cc_id,
        };
        self.engine
            .with_worker(|w, _| w.add_producer(peer, params))
            .map_err(api_error)
    }

    /// Remove a producer; returns the consumers removed with it.
    fn remove_producer(&self, producer: u32) -> PyResult<Vec<u32>> {
        self.engine
            .with_worker(|w, _| w.remove_producer(producer))
            .map_err(api_error)
    }

    fn set_producer_forwarding(&self, producer: u32, forwarding: bool) -> PyResult<()> {
        self.engine
            .with_worker(|w, now| w.set_producer_forwarding(producer, forwarding, now))
            .map_err(api_error)
    }

    fn request_keyframe(&self, producer: u32) -> PyResult<()> {
        self.engine
            .with_worker(|w, now| w.request_keyframe(producer, now))
            .map_err(api_error)
    }

    /// (packets, bytes, dropped, keyframe_requests)
    fn producer_stats(&self, producer: u32) -> PyResult<(u64, u64, u64, u64)> {
        let s = self
            .engine
            .with_worker(|w, _| w.producer_stats(producer))
            .map_err(api_error)?;
        Ok((s.packets, s.bytes, s.dropped, s.keyframe_requests))
    }

    /// [(producer, loudness_sum, packets, voiced)] since the last call, for producers that sent levels.
    fn take_levels(&self) -> Vec<(u32, u32, u32, u32)> {
        let mut out = Vec::new();
        self.engine.with_worker(|w, _| w.take_levels(&mut out));
        out.into_iter()
            .map(|(p, l)| (p, l.loudness_sum, l.packets, l.voiced))
            .collect()
    }

    /// [(rid, ssrc, bitrate_bps, width, height, wanted)] per layer, lowest first (0: not known yet).
    #[allow(clippy::type_complexity)]
    fn producer_layers(&self, producer: u32) -> PyResult<Vec<(String, u32, u64, u16, u16, bool)>> {
        let layers = self
            .engine
            .with_worker(|w, now| w.producer_layers(producer, now))
            .map_err(api_error)?;
        Ok(layers
            .into_iter()
            .map(|(rid, ssrc, bps, w, h, wanted)| {
                (
                    String::from_utf8_lossy(&rid).into_owned(),
                    ssrc,
                    bps,
                    w,
                    h,
                    wanted,
                )
            })
            .collect())
    }

    /// A consumer with its SSRC and, for video, its RTX SSRC (0: the worker picks one).
    #[pyo3(signature = (producer, subscriber, ssrc=0, rtx_ssrc=0))]
    fn add_consumer(
        &self,
        producer: u32,
        subscriber: u32,
        ssrc: u32,
        rtx_ssrc: u32,
    ) -> PyResult<u32> {
        self.engine
            .with_worker(|w, _| w.add_consumer(producer, subscriber, ssrc, rtx_ssrc))
            .map_err(api_error)
    }

    /// The consumer's RTX SSRC (0 for audio).
    fn consumer_rtx_ssrc(&self, consumer: u32) -> PyResult<u32> {
        self.engine
            .with_worker(|w, _| w.consumer_rtx_ssrc(consumer))
            .map_err(api_error)
    }

    /// `transport_cc_id`: write the subscriber peer's transport-wide sequence numbers;
    /// `rtx_payload_types`: the subscriber's (RTX PT, apt) pairs (empty: NACKs get plain resends).
    #[pyo3(signature = (consumer, payload_types, *, mid, mid_id=0, abs_send_time_id=0, audio_level_id=0, transport_cc_id=0, rtx_payload_types=Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn configure_consumer(
        &self,
        consumer: u32,
        payload_types: Vec<(u8, u8)>,
        mid: &str,
        mid_id: u8,
        abs_send_time_id: u8,
        audio_level_id: u8,
        transport_cc_id: u8,
        rtx_payload_types: Vec<(u8, u8)>,
    ) -> PyResult<()> {
        let params = ConsumerParams {
            payload_types,
            ext: Extensions {
                mid: mid.as_bytes().to_vec(),
                mid_id,
                abs_send_time_id,
                audio_level_id,
                transport_cc_id,
            },
            rtx_payload_types,
        };
        self.engine
            .with_worker(|w, _| w.configure_consumer(consumer, params))
            .map_err(api_error)
    }

    /// The client's wishes for a video consumer: a layer cap by index (-1: none) or by displayed
    /// size (0: none), or no packets at all (`paused`: a hidden tile; not `set_consumer_paused`).
    #[pyo3(signature = (consumer, *, max_layer=-1, max_width=0, max_height=0, paused=false))]
    fn set_consumer_preferences(
        &self,
        consumer: u32,
        max_layer: i32,
        max_width: u32,
        max_height: u32,
        paused: bool,
    ) -> PyResult<()> {
        let prefs = Preferences {
            max_layer,
            max_width,
            max_height,
            paused,
        };
        self.engine
            .with_worker(|w, now| w.set_consumer_preferences(consumer, prefs, now))
            .map_err(api_error)
    }

    /// (current layer, target layer); -1: none yet.
    fn consumer_layers(&self, consumer: u32) -> PyResult<(i32, i32)> {
        self.engine
            .with_worker(|w, _| w.consumer_layers(consumer))
            .map_err(api_error)
    }

    /// Override the peer's bandwidth estimate in bits per second (0: back to the estimator).
    fn set_peer_bandwidth(&self, peer: u32, bps: u64) -> PyResult<()> {
        self.engine
            .with_worker(|w, _| w.set_peer_bandwidth(peer, bps))
            .map_err(api_error)
    }

    /// (bps, source): source is "twcc", "remb", "override" or "initial".
    fn peer_bandwidth(&self, peer: u32) -> PyResult<(u64, &'static str)> {
        self.engine
            .with_worker(|w, _| w.peer_bandwidth(peer))
            .map_err(api_error)
    }

    fn set_consumer_ready(&self, consumer: u32, ready: bool) -> PyResult<()> {
        self.engine
            .with_worker(|w, now| w.set_consumer_ready(consumer, ready, now))
            .map_err(api_error)
    }

    fn set_consumer_paused(&self, consumer: u32, paused: bool) -> PyResult<()> {
        self.engine
            .with_worker(|w, now| w.set_consumer_paused(consumer, paused, now))
            .map_err(api_error)
    }

    fn remove_consumer(&self, consumer: u32) -> PyResult<()> {
        self.engine
            .with_worker(|w, _| w.remove_consumer(consumer))
            .map_err(api_error)
    }

    /// (packets, bytes, retransmitted, nacks, plis)
    fn consumer_stats(&self, consumer: u32) -> PyResult<(u64, u64, u64, u64, u64)> {
        let s = self
            .engine
            .with_worker(|w, _| w.consumer_stats(consumer))
            .map_err(api_error)?;
        Ok((s.packets, s.bytes, s.retransmitted, s.nacks, s.plis))
    }

    fn forwarded_total(&self) -> u64 {
        self.engine.with_worker(|w, _| w.forwarded_total())
    }

    /// Worker-wide counters and object counts.
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (c, (peers, producers, consumers)) =
            self.engine.with_worker(|w, _| (w.counters, w.counts()));
        let d = PyDict::new(py);
        for (k, v) in [
            ("rx_datagrams", c.rx_datagrams),
            ("tx_datagrams", c.tx_datagrams),
            ("forwarded", c.forwarded),
            ("stun_answered", c.stun_answered),
            ("stun_rejected", c.stun_rejected),
            ("srtp_errors", c.srtp_errors),
            ("bad_packets", c.bad_packets),
            ("unknown_source", c.unknown_source),
            ("unknown_ssrc", c.unknown_ssrc),
            ("oversized", c.oversized),
            ("duplicates", c.duplicates),
            ("rtx_received", c.rtx_received),
            ("rtx_dropped", c.rtx_dropped),
            ("nacks_sent", c.nacks_sent),
            ("bad_feedback", c.bad_feedback),
            ("probes", c.probes),
            ("probes_succeeded", c.probes_succeeded),
            ("probe_packets", c.probe_packets),
            ("panics", c.panics),
            ("peers", peers as u64),
            ("producers", producers as u64),
            ("consumers", consumers as u64),
        ] {
            d.set_item(k, v)?;
        }
        Ok(d)
    }
}

/// The benchmark's ceiling (see `ceiling.rs`): the minimal forwarder under a load shape, measured.
#[pyfunction]
#[pyo3(signature = (*, rooms, peers_per_room, publishers_per_room, packets_per_s=50, payload_bytes=100, seconds=10.0, forwarder_core=None, load_core=None, profile=0x0008))]
#[allow(clippy::too_many_arguments)]
fn ceiling<'py>(
    py: Python<'py>,
    rooms: usize,
    peers_per_room: usize,
    publishers_per_room: usize,
    packets_per_s: u32,
    payload_bytes: usize,
    seconds: f64,
    forwarder_core: Option<usize>,
    load_core: Option<usize>,
    profile: u16,
) -> PyResult<Bound<'py, PyDict>> {
    let load = crate::ceiling::Load {
        rooms,
        peers_per_room,
        publishers_per_room,
        packets_per_s,
        payload_bytes,
        seconds,
        forwarder_core,
        load_core,
        profile,
    };
    let outcome = py
        .allow_threads(|| crate::ceiling::run(&load))
        .map_err(|e| PyOSError::new_err(e.to_string()))?;
    let d = PyDict::new(py);
    d.set_item("sent", outcome.sent)?;
    d.set_item("forwarded", outcome.forwarded)?;
    d.set_item("received", outcome.received)?;
    d.set_item("forwarder_cpu_s", outcome.forwarder_cpu_s)?;
    d.set_item("elapsed_s", outcome.elapsed_s)?;
    d.set_item("pps_per_core", outcome.pps_per_core())?;
    Ok(d)
}

#[pymodule]
fn voxa_dataplane(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<PySrtpSession>()?;
    m.add_class::<PyWorker>()?;
    m.add_function(wrap_pyfunction!(srtp_keying_material_len, m)?)?;
    m.add_function(wrap_pyfunction!(classify, m)?)?;
    m.add_function(wrap_pyfunction!(ceiling, m)?)?;
    Ok(())
}

//! Voxa SFU's native data plane.
//!
//! The Python control plane (routers, negotiation, the control API) stays in `voxa.sfu`; this crate
//! does the per-packet work: classify datagrams of the worker's one media port, SRTP, RTP rewriting,
//! RTCP, and the ICE-lite side of STUN. Each protocol is a pure module tested without sockets; the
//! Python bindings (feature `python`) are in `py`.

pub mod bwe;
pub mod ceiling;
pub mod classify;
pub mod codecs;
pub mod io;
pub mod layers;
pub mod probe;
pub mod remb;
pub mod rtcp;
pub mod rtp;
pub mod srtp;
pub mod stun;
pub mod twcc;
pub mod worker;

#[cfg(feature = "python")]
mod py;

//! The Python extension module `voxa_dataplane`: thin typed wrappers over the pure modules.
//!
//! Errors become `ValueError` with the module's message; nothing here runs per packet on the
//! forwarding path except what the wrapped module does.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::classify::{classify as classify_datagram, Kind};
use crate::srtp::{keying_material_len, Session};

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

#[pymodule]
fn voxa_dataplane(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<PySrtpSession>()?;
    m.add_function(wrap_pyfunction!(srtp_keying_material_len, m)?)?;
    m.add_function(wrap_pyfunction!(classify, m)?)?;
    Ok(())
}

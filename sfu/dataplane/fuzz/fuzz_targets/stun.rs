//! ICE-lite STUN on arbitrary input: parsing a binding request and checking its integrity never
//! panic, and a request built as a full agent would (transaction id, username and password from
//! the input) parses back, verifies with its password and fails with another.
#![no_main]

use libfuzzer_sys::fuzz_target;
use voxa_dataplane::stun;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = stun::parse_binding_request(data) {
        let username = request.username(data);
        let ufrag = request.local_ufrag(data);
        assert!(ufrag.len() <= username.len());
        let _ = request.verify(data, b"fuzz-password");
    }
    if data.len() < 13 {
        return;
    }
    let (tid, rest) = data.split_at(12);
    let tid: [u8; 12] = tid.try_into().unwrap();
    let split = (rest[0] as usize).min(rest.len() - 1);
    let (username, password) = rest[1..].split_at(split.min(rest.len() - 1));
    if username.is_empty() || username.len() > 500 || password.is_empty() {
        return;
    }
    let mut request = Vec::new();
    stun::build_binding_request(&mut request, &tid, username, password, rest[0] & 1 != 0);
    let parsed = stun::parse_binding_request(&request).expect("a built request parses");
    assert_eq!(parsed.transaction_id, tid);
    assert_eq!(parsed.username(&request), username);
    assert_eq!(parsed.use_candidate, rest[0] & 1 != 0);
    parsed
        .verify(&request, password)
        .expect("verifies with its password");
    let mut other = password.to_vec();
    other[0] ^= 1;
    assert!(parsed.verify(&request, &other).is_err());
});

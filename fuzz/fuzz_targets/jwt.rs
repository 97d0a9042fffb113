//! Token handling: Mercure access tokens (both roles, draft and legacy
//! claims) and Centrifugo connection tokens, from untrusted strings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::auth::jwt::{Role, TrustedKey, Verifier};

fuzz_target!(|token: &str| {
    let key = TrustedKey::new("fuzz-secret", jsonwebtoken::Algorithm::HS256).unwrap();
    let verifier = Verifier {
        publisher: vec![key.clone()],
        subscriber: vec![key.clone()],
        issuer: "https://issuer.example".into(),
        audience: "https://hub.example/.well-known/mercure".into(),
        legacy: true,
        hub: url::Url::parse("https://hub.example/.well-known/mercure").unwrap(),
        limits: Default::default(),
    };
    // No key is known to the fuzzer: nothing may verify.
    assert!(verifier.verify(token, Role::Publisher).is_err());
    assert!(verifier.verify(token, Role::Subscriber).is_err());
    assert!(key.verify_plain(token).is_err());
});

//! Heads in, heads out: byte fixtures for every rule the rewriting applies.

use std::sync::Arc;

use super::*;
use crate::route::HostMatch;

const BACKEND: &str = "10.0.0.9:8080";

fn routes() -> Vec<Route> {
    vec![Route {
        host: HostMatch::Any,
        path_prefix: "/".into(),
        group: 0,
        forwarding: Arc::new(ForwardingRules::default()),
    }]
}

/// The upstream head and what the request says, or the refusal.
fn request(raw: &str) -> Result<(String, RequestInfo), Refusal> {
    let routes = routes();
    let mut out = Vec::new();
    match parse_request(
        raw.as_bytes(),
        100,
        "192.0.2.1",
        &routes,
        |_| BACKEND.parse().unwrap(),
        false,
        &mut out,
    ) {
        ParsedRequest::Head(n, r) => {
            assert_eq!(n, raw.len(), "the whole head is consumed");
            r.map(|r| (String::from_utf8(out).unwrap(), r.info))
        }
        other => panic!("{other:?}"),
    }
}

fn response(raw: &str, req: &RequestInfo) -> (String, Option<ClientHead>) {
    let mut out = Vec::new();
    match parse_response(
        raw.as_bytes(),
        req,
        &ForwardingRules::default(),
        false,
        &mut out,
    ) {
        ParsedResponse::Final(n, head) => {
            assert_eq!(n, raw.len());
            (String::from_utf8(out).unwrap(), head)
        }
        other => panic!("{other:?}"),
    }
}

fn get() -> RequestInfo {
    request("GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap().1
}

#[test]
fn the_clients_close_is_not_forwarded_and_the_client_is_appended_to_xff() {
    let (head, info) = request(
        "GET http://a/x?y HTTP/1.1\r\nHost: a\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\n\
         Keep-Alive: timeout=5\r\nX-Forwarded-For: 203.0.113.9\r\nX-Kept: yes\r\n\r\n",
    )
    .unwrap();
    assert_eq!(
        head,
        "GET /x?y HTTP/1.1\r\nHost: a\r\nX-Kept: yes\r\nX-Forwarded-For: 203.0.113.9, 192.0.2.1\r\n\
         X-Forwarded-Proto: http\r\n\r\n"
    );
    assert!(!info.client_keep_alive);
    assert!(info.repeatable && info.framing == Framing::None);
}

#[test]
fn an_http10_request_goes_up_as_http11_with_a_host() {
    let (head, info) = request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
    assert!(head.starts_with("GET / HTTP/1.1\r\n"), "{head}");
    assert!(head.contains(&format!("Host: {BACKEND}\r\n")), "{head}");
    assert!(!head.contains("onnection"), "{head}");
    assert!(info.client_http10 && info.client_keep_alive);
    let (_, info) = request("GET / HTTP/1.0\r\n\r\n").unwrap();
    assert!(!info.client_keep_alive, "HTTP/1.0 closes unless asked");
}

#[test]
fn smuggling_vectors_are_refused() {
    assert_eq!(
        request(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .unwrap_err(),
        Refusal::LengthAndEncoding
    );
    assert_eq!(
        request("GET / HTTP/1.1\r\n\r\n").unwrap_err(),
        Refusal::MissingHost
    );
}

#[test]
fn bodies_keep_their_framing_and_expect_is_answered_here() {
    let (head, info) = request(
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\nTrailer: X-T\r\n\r\n",
    )
    .unwrap();
    assert!(head.ends_with("Content-Length: 5\r\n\r\n"), "{head}");
    assert!(
        !head.contains("Expect") && !head.contains("Trailer"),
        "{head}"
    );
    assert_eq!(info.framing, Framing::Length(5));
    assert!(info.expect_continue && !info.repeatable);
    let (head, info) = request(
        "PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n",
    )
    .unwrap();
    assert!(
        head.contains("Trailer: X-Checksum\r\n"),
        "with a chunked body: {head}"
    );
    assert!(
        head.ends_with("Transfer-Encoding: chunked\r\n\r\n"),
        "{head}"
    );
    assert_eq!(info.framing, Framing::Chunked);
    assert!(!info.repeatable, "a body cannot be sent again");
}

#[test]
fn an_upgrade_keeps_its_upgrade_headers() {
    let (head, info) =
        request("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            .unwrap();
    assert!(info.upgrade);
    assert!(
        head.contains("Upgrade: websocket\r\n") && head.contains("Connection: upgrade\r\n"),
        "{head}"
    );
}

#[test]
fn parse_states_are_told_apart() {
    let routes = routes();
    let mut out = Vec::new();
    let parse = |raw: &[u8], max: usize, out: &mut Vec<u8>| {
        parse_request(
            raw,
            max,
            "x",
            &routes,
            |_| BACKEND.parse().unwrap(),
            true,
            out,
        )
    };
    assert!(matches!(
        parse(b"GET / HTTP/1.1\r\nHost", 100, &mut out),
        ParsedRequest::Partial
    ));
    assert!(matches!(
        parse(b"\x00\x01 nonsense\r\n\r\n", 100, &mut out),
        ParsedRequest::Malformed
    ));
    assert!(matches!(
        parse(
            b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n",
            2,
            &mut out
        ),
        ParsedRequest::TooManyHeaders
    ));
    match parse(b"GET /p HTTP/1.1\r\nHost: a\r\n\r\n", 100, &mut out) {
        ParsedRequest::Head(_, Ok(r)) => {
            assert_eq!(r.line.as_deref(), Some("GET /p HTTP/1.1"));
            assert!(r.route.is_some());
        }
        other => panic!("{other:?}"),
    }
    let none: Vec<Route> = vec![];
    match parse_request(
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        100,
        "x",
        &none,
        |_| BACKEND.parse().unwrap(),
        false,
        &mut out,
    ) {
        ParsedRequest::Head(_, Ok(r)) => assert!(r.route.is_none(), "no route: 404"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn responses_lose_hop_by_hop_headers_and_keep_one_length() {
    let (head, h) = response(
        "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nContent-Length: 2, 2\r\n\r\n",
        &get(),
    );
    assert_eq!(head, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
    let h = h.unwrap();
    assert_eq!(
        (h.info.status, h.to_client, h.keep),
        (200, Framing::Length(2), true)
    );
    assert!(h.info.upstream_keep_alive);
    let (_, h) = response(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
        &get(),
    );
    assert_eq!(h, None, "conflicting lengths");
}

#[test]
fn a_chunked_response_keeps_its_trailers_only_for_an_http11_client() {
    let raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n";
    let (head, h) = response(raw, &get());
    assert!(
        head.contains("Trailer: X-Checksum\r\n") && head.contains("Transfer-Encoding: chunked"),
        "{head}"
    );
    assert_eq!(h.unwrap().to_client, Framing::Chunked);
    let old = request("GET / HTTP/1.0\r\n\r\n").unwrap().1;
    let (head, h) = response(raw, &old);
    assert!(
        !head.contains("Trailer") && !head.contains("chunked"),
        "{head}"
    );
    assert!(
        head.starts_with("HTTP/1.0 200 OK\r\n") && head.contains("Connection: close\r\n"),
        "{head}"
    );
    let h = h.unwrap();
    assert_eq!(
        (h.info.framing, h.to_client, h.keep),
        (Framing::Chunked, Framing::UntilClose, false)
    );
}

#[test]
fn interim_heads_and_garbage_are_recognised() {
    let mut out = Vec::new();
    let rules = ForwardingRules::default();
    assert_eq!(
        parse_response(
            b"HTTP/1.1 100 Continue\r\n\r\n",
            &get(),
            &rules,
            false,
            &mut out
        ),
        ParsedResponse::Interim(25)
    );
    assert_eq!(
        parse_response(b"HTTP/1.1 20", &get(), &rules, false, &mut out),
        ParsedResponse::Partial
    );
    assert_eq!(
        parse_response(b"SSH-2.0-x\r\n\r\n", &get(), &rules, false, &mut out),
        ParsedResponse::Malformed
    );
    // A response to HEAD has no body, whatever its length says.
    let head = request("HEAD / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap().1;
    let (text, h) = response("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", &head);
    assert!(text.contains("Content-Length: 9"));
    assert_eq!(h.unwrap().to_client, Framing::None);
}

#[test]
fn lengths_are_written_in_decimal() {
    for n in [0u64, 7, 10, 1234567890, u64::MAX] {
        let mut out = Vec::new();
        push_length(&mut out, n);
        assert_eq!(out, format!("Content-Length: {n}\r\n").into_bytes());
    }
}

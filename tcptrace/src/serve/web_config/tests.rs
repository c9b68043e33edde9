use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::{ClientConfig, pki_types::ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};
use tokio_rustls::TlsConnector;

use super::*;

/// A directory of its own per test, removed afterwards.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tcptrace-web-config-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the test directory");
        Self(dir)
    }

    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, contents).expect("write a test file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for `localhost` and its PKCS#8 key, both PEM.
fn self_signed() -> (String, String) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("generate a certificate");
    (cert.pem(), signing_key.serialize_pem())
}

fn load_err(path: &Path) -> String {
    let message = WebConfig::load(path).expect_err("the config must be refused").to_string();
    assert!(!message.contains('\n'), "not one line: {message}");
    assert!(message.contains(&format!("{path:?}")), "does not name the file: {message}");
    message
}

fn basic(user_password: &str) -> Vec<u8> {
    format!("Basic {}", BASE64.encode(user_password)).into_bytes()
}

/// A config with the users alice (password "secret") and bob (password "hunter2").
fn with_users(dir: &TempDir) -> WebConfig {
    let alice = bcrypt::hash("secret", 4).expect("hash");
    let bob = bcrypt::hash("hunter2", 4).expect("hash");
    let path =
        dir.write("web.yml", format!("basic_auth_users:\n  alice: {alice}\n  bob: '{bob}'\n"));
    WebConfig::load(&path).expect("load")
}

#[test]
fn web_config_is_shareable_across_tasks() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<WebConfig>();
}

#[test]
fn parses_a_full_config() {
    let dir = TempDir::new("full");
    let (cert, key) = self_signed();
    dir.write("server.crt", &cert);
    dir.write("server.key", &key);
    // The server's own certificate stands in as the client CA: parsing is what is tested.
    dir.write("ca.crt", &cert);
    let hash = bcrypt::hash("secret", 4).expect("hash");
    let path = dir.write(
        "web.yml",
        format!(
            "# as node_exporter documents it
tls_server_config:
  cert_file: server.crt
  key_file: {key}
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
  min_version: TLS12
  max_version: TLS13
  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]
  curve_preferences: [X25519, CurveP256]
  prefer_server_cipher_suites: true
http_server_config:
  http2: false
  headers:
    X-Frame-Options: deny
    Strict-Transport-Security: max-age=31536000
basic_auth_users:
  alice: {hash}
",
            key = dir.0.join("server.key").display()
        ),
    );
    let config = WebConfig::load(&path).expect("load");
    assert!(config.tls_acceptor().is_some());
    assert!(config.requires_auth());
    assert!(!config.http2());
    assert_eq!(
        config.response_headers(),
        [
            ("Strict-Transport-Security".to_owned(), "max-age=31536000".to_owned()),
            ("X-Frame-Options".to_owned(), "deny".to_owned()),
        ]
    );
    let debug = format!("{config:?}");
    assert!(debug.contains("alice") && !debug.contains(&hash), "{debug}");
}

#[test]
fn empty_file_means_plain_http_without_auth() {
    let dir = TempDir::new("empty");
    for (name, contents) in [("empty.yml", ""), ("comments.yml", "# nothing\n")] {
        let config = WebConfig::load(&dir.write(name, contents)).expect("load");
        assert!(config.tls_acceptor().is_none());
        assert!(!config.requires_auth());
        assert!(config.http2());
        assert!(config.authorized(None));
        assert_eq!(config.authorized_cached(None), Some(true));
    }
    // A TLS section that enables nothing is plain HTTP too, as in exporter-toolkit.
    let path = dir.write("versions.yml", "tls_server_config:\n  min_version: TLS13\n");
    assert!(WebConfig::load(&path).expect("load").tls_acceptor().is_none());
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let dir = TempDir::new("unknown");
    let cases = [
        ("basic_auth_user:\n  alice: x\n", "basic_auth_user"),
        ("tls_server_config:\n  cert_fle: a.crt\n", "cert_fle"),
        ("http_server_config:\n  header:\n    X-Frame-Options: deny\n", "header"),
    ];
    for (contents, key) in cases {
        let message = load_err(&dir.write("web.yml", contents));
        assert!(message.contains(&format!("`{key}`")), "{key}: {message}");
    }
}

#[test]
fn repeated_keys_are_refused() {
    let dir = TempDir::new("repeated");
    let hash = bcrypt::hash("x", 4).expect("hash");
    let path =
        dir.write("web.yml", format!("basic_auth_users:\n  alice: {hash}\n  alice: {hash}\n"));
    assert!(load_err(&path).contains("duplicate key \"alice\""));
}

#[test]
fn missing_cert_file_is_named() {
    let dir = TempDir::new("missing");
    let (_, key) = self_signed();
    dir.write("server.key", key);
    let path =
        dir.write("web.yml", "tls_server_config:\n  cert_file: gone.crt\n  key_file: server.key\n");
    let message = load_err(&path);
    // Relative to the config's directory, not to the working directory.
    let expected = dir.0.join("gone.crt");
    assert!(message.contains(&format!("cert_file {expected:?}")), "{message}");
    assert!(message.contains("No such file"), "{message}");
}

#[test]
fn unusable_tls_material_is_refused() {
    let dir = TempDir::new("tls-material");
    let (cert, key) = self_signed();
    let (_, other_key) = self_signed();
    dir.write("server.crt", &cert);
    dir.write("server.key", &key);
    dir.write("other.key", &other_key);
    dir.write("garbage.pem", "not PEM at all\n");
    let cases = [
        ("cert_file: server.crt", "missing one of key or key_file"),
        ("key_file: server.key", "missing one of cert or cert_file"),
        ("cert_file: garbage.pem\n  key_file: server.key", "no PEM certificate found"),
        ("cert_file: server.crt\n  key_file: garbage.pem", "no PEM private key found"),
        ("cert_file: server.crt\n  key_file: server.crt", "no PEM private key found"),
        ("cert_file: server.crt\n  key_file: other.key", "not the private key of cert_file"),
        ("cert_file: .\n  key_file: server.key", "not a regular file"),
    ];
    for (tls, expected) in cases {
        let path = dir.write("web.yml", format!("tls_server_config:\n  {tls}\n"));
        let message = load_err(&path);
        assert!(message.contains(expected), "{tls}: {message}");
    }
}

#[test]
fn bad_bcrypt_hashes_are_refused_at_load() {
    let dir = TempDir::new("hashes");
    let good = bcrypt::hash("secret", 4).expect("hash");
    let with_cost = |cost: &str| format!("$2y${cost}{}", &good[6..]);
    let cases = [
        "secret".to_owned(),
        "$1$abcdefgh$0123456789abcdefghijk".to_owned(),
        format!("$2x${}", &good[4..]),
        good[..40].to_owned(),
        format!("{good}x"),
        with_cost("03"),
        with_cost("32"),
        with_cost("xx"),
        String::new(),
    ];
    for hash in &cases {
        let path = dir.write("web.yml", format!("basic_auth_users:\n  alice: '{hash}'\n"));
        let message = load_err(&path);
        assert!(message.contains("user \"alice\""), "{hash}: {message}");
        assert!(!hash.is_empty() || message.contains("not a bcrypt hash"), "{message}");
    }
    let path = dir.write("web.yml", format!("basic_auth_users:\n  alice: '{}'\n", with_cost("04")));
    assert!(WebConfig::load(&path).is_ok(), "cost 4 is allowed");
}

#[test]
fn impossible_users_are_refused() {
    let dir = TempDir::new("users");
    let hash = bcrypt::hash("x", 4).expect("hash");
    let colon = dir.write("colon.yml", format!("basic_auth_users:\n  'a:b': {hash}\n"));
    assert!(load_err(&colon).contains("cannot contain ':'"));
    let empty = dir.write("empty.yml", "basic_auth_users: {}\n");
    assert!(load_err(&empty).contains("basic_auth_users is empty"));
}

#[test]
fn authorized_checks_basic_credentials() {
    let dir = TempDir::new("authorized");
    let config = with_users(&dir);
    assert!(config.requires_auth());
    assert!(config.authorized(Some(&basic("alice:secret"))));
    assert!(config.authorized(Some(&basic("bob:hunter2"))));
    assert!(config.authorized(Some(b"basic YWxpY2U6c2VjcmV0")), "scheme is case-insensitive");

    let refused: [(&str, Option<Vec<u8>>); 13] = [
        ("wrong password", Some(basic("alice:wrong"))),
        ("another user's password", Some(basic("alice:hunter2"))),
        ("empty password", Some(basic("alice:"))),
        // alice's password: the decoy an unknown user is checked against is a configured hash.
        ("unknown user", Some(basic("mallory:secret"))),
        ("non-UTF-8 user", Some(format!("Basic {}", BASE64.encode(b"\xffalice:secret")).into())),
        ("bearer scheme", Some(b"Bearer YWxpY2U6c2VjcmV0".to_vec())),
        ("scheme only", Some(b"Basic".to_vec())),
        ("bad base64", Some(b"Basic YWxpY2U6c2VjcmV0!!".to_vec())),
        ("unpadded base64", Some(b"Basic YWxpY2U6c2VjcmV0Mw".to_vec())),
        ("no colon", Some(basic("alicesecret"))),
        ("missing header", None),
        ("garbage bytes", Some(vec![0xff, 0x00, b'\n', 0x80])),
        ("huge header", Some(basic(&format!("alice:{}", "x".repeat(8192))))),
    ];
    for (what, header) in &refused {
        assert!(!config.authorized(header.as_deref()), "{what} was let in");
    }
}

#[test]
fn successes_are_cached_and_failures_are_not() {
    let dir = TempDir::new("cached");
    let config = with_users(&dir);
    let good = basic("alice:secret");
    let bad = basic("alice:wrong");
    assert_eq!(config.authorized_cached(Some(&good)), None, "bcrypt must decide first");
    assert_eq!(config.authorized_cached(None), Some(false));
    assert_eq!(config.authorized_cached(Some(b"Bearer x")), Some(false));
    assert!(config.authorized(Some(&good)));
    assert_eq!(config.authorized_cached(Some(&good)), Some(true));
    assert!(!config.authorized(Some(&bad)));
    assert_eq!(config.authorized_cached(Some(&bad)), None);
    assert_eq!(config.authorized_cached(Some(&basic("bob:hunter2"))), None);
}

#[test]
fn auth_cache_is_bounded_and_forgets_the_oldest() {
    let mut cache = AuthCache::default();
    for i in 0..=AUTH_CACHE_ENTRIES {
        cache.insert([u8::try_from(i).expect("small"); 32]);
    }
    assert_eq!(cache.keys.len(), AUTH_CACHE_ENTRIES);
    assert!(!cache.contains(&[0; 32]), "the oldest entry stays");
    assert!(cache.contains(&[1; 32]));
    assert!(cache.contains(&[u8::try_from(AUTH_CACHE_ENTRIES).expect("small"); 32]));
}

#[test]
fn headers_are_checked_like_exporter_toolkit() {
    let dir = TempDir::new("headers");
    let cases = [
        ("X-Powered-By: tcptrace", "HTTP header \"X-Powered-By\" can not be configured"),
        ("x-frame-options: deny", "HTTP header \"x-frame-options\" can not be configured"),
        ("X-Frame-Options: allow", "invalid value for X-Frame-Options"),
        ("X-Content-Type-Options: sniff", "invalid value for X-Content-Type-Options"),
        ("Content-Security-Policy: \"a\\u0001b\"", "must be visible ASCII"),
    ];
    for (header, expected) in cases {
        let path = dir.write("web.yml", format!("http_server_config:\n  headers:\n    {header}\n"));
        let message = load_err(&path);
        assert!(message.contains(expected), "{header}: {message}");
    }
}

#[test]
fn unsupported_options_are_refused_by_name() {
    let dir = TempDir::new("unsupported");
    let (cert, key) = self_signed();
    dir.write("server.crt", &cert);
    dir.write("server.key", &key);
    let tls = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    let cases = [
        (format!("{tls}  client_auth_type: RequireAnyClientCert\n"), "RequireAnyClientCert"),
        (format!("{tls}  client_auth_type: RequestClientCert\n"), "RequestClientCert"),
        (
            format!(
                "{tls}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: \
                     server.crt\n  client_allowed_sans: [client]\n"
            ),
            "client_allowed_sans",
        ),
        (format!("{tls}  curve_preferences: [CurveP521]\n"), "CurveP521"),
        (format!("{tls}  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n"), "CBC_SHA"),
        (format!("{tls}  max_version: TLS11\n"), "max_version TLS11"),
        ("rate_limit:\n  burst: 10\n  interval: 1s\n".to_owned(), "rate_limit"),
    ];
    for (contents, option) in &cases {
        let message = load_err(&dir.write("web.yml", contents));
        assert!(message.contains(option), "{option}: {message}");
        assert!(message.contains("not supported"), "{option}: {message}");
    }
    let invalid = [
        (format!("{tls}  client_auth_type: Sometimes\n"), "invalid client_auth_type"),
        (format!("{tls}  client_ca_file: server.crt\n"), "without a client_auth_type"),
        (format!("{tls}  client_auth_type: RequireAndVerifyClientCert\n"), "needs client_ca_file"),
        (format!("{tls}  min_version: TLS14\n"), "unknown TLS version"),
        (format!("{tls}  min_version: TLS13\n  max_version: TLS12\n"), "above max_version"),
        (format!("{tls}  curve_preferences: [P256]\n"), "unknown curve"),
    ];
    for (contents, expected) in &invalid {
        let message = load_err(&dir.write("web.yml", contents));
        assert!(message.contains(expected), "{expected}: {message}");
    }
    // TLS 1.0 and 1.1 do not exist here: asking for them as a minimum means TLS 1.2.
    let path = dir.write("web.yml", format!("{tls}  min_version: TLS10\n"));
    assert!(WebConfig::load(&path).expect("load").tls_acceptor().is_some());
}

#[test]
fn only_small_regular_files_are_read() {
    let dir = TempDir::new("files");
    assert!(load_err(&dir.0).contains("not a regular file"));
    assert!(load_err(Path::new("/dev/null")).contains("not a regular file"));
    let big = dir.write("big.yml", vec![b'#'; usize::try_from(MAX_FILE_BYTES).expect("fits") + 1]);
    assert!(load_err(&big).contains("larger than"));
    assert!(load_err(&dir.0.join("absent.yml")).contains("No such file"));
    let not_yaml = dir.write("bad.yml", "tls_server_config: [\n");
    load_err(&not_yaml);
    let not_utf8 = dir.write("latin1.yml", b"basic_auth_users:\n  \xe9: x\n");
    load_err(&not_utf8);
}

#[test]
fn yaml_alias_bombs_are_refused() {
    let dir = TempDir::new("bomb");
    let mut bomb = String::from("rate_limit:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for (name, previous) in ["b", "c", "d", "e", "f", "g", "h", "i"]
        .iter()
        .zip(["a", "b", "c", "d", "e", "f", "g", "h"])
    {
        let refs = vec![format!("*{previous}"); 10].join(", ");
        bomb.push_str(&format!("  {name}: &{name} [{refs}]\n"));
    }
    load_err(&dir.write("web.yml", bomb));
}

/// A client that trusts `ca_pem`, presents `identity` when given, and offers h2 before
/// http/1.1 (as browsers do).
fn connector(ca_pem: &str, identity: Option<(&str, &str)>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(ring_provider::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("client certificate");
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("client key");
            builder.with_client_auth_cert(chain, key).expect("client identity")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// Handshakes over an in-memory pipe, the client sending "ping" and the server answering
/// "pong"; returns what each side got (or its error) and the negotiated ALPN protocol.
async fn exchange(
    acceptor: TlsAcceptor,
    connector: TlsConnector,
) -> (io::Result<[u8; 4]>, io::Result<([u8; 4], Option<Vec<u8>>)>) {
    let (client_io, server_io) = duplex(64 * 1024);
    let server = async move {
        let mut tls = acceptor.accept(server_io).await?;
        let mut got = [0; 4];
        tls.read_exact(&mut got).await?;
        tls.write_all(b"pong").await?;
        tls.shutdown().await?;
        Ok(got)
    };
    let client = async move {
        let name = ServerName::try_from("localhost").expect("server name");
        let mut tls = connector.connect(name, client_io).await?;
        tls.write_all(b"ping").await?;
        let mut got = [0; 4];
        tls.read_exact(&mut got).await?;
        Ok((got, tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)))
    };
    tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(server, client) })
        .await
        .expect("the handshake hung")
}

#[tokio::test(flavor = "current_thread")]
async fn tls_acceptor_handshakes() {
    let dir = TempDir::new("handshake");
    let (cert, key) = self_signed();
    dir.write("server.crt", &cert);
    dir.write("server.key", &key);
    let path = dir
        .write("web.yml", "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n");
    let config = WebConfig::load(&path).expect("load");
    let acceptor = config.tls_acceptor().expect("TLS is configured");

    let (server, client) = exchange(acceptor, connector(&cert, None)).await;
    assert_eq!(server.expect("server side"), *b"ping");
    let (got, alpn) = client.expect("client side");
    assert_eq!(got, *b"pong");
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]), "h2 must not be chosen");

    // A client that trusts another certificate must not get through.
    let (stranger, _) = self_signed();
    let (server, client) =
        exchange(config.tls_acceptor().expect("TLS"), connector(&stranger, None)).await;
    assert!(server.is_err() && client.is_err());
}

#[tokio::test(flavor = "current_thread")]
async fn inline_pem_and_tls13_only_handshake() {
    let dir = TempDir::new("inline");
    let (cert, key) = self_signed();
    let indent = |pem: &str| pem.lines().map(|l| format!("    {l}\n")).collect::<String>();
    let path = dir.write(
        "web.yml",
        format!(
            "tls_server_config:\n  min_version: TLS13\n  cert: |\n{}  key: |\n{}",
            indent(&cert),
            indent(&key)
        ),
    );
    let config = WebConfig::load(&path).expect("load");
    let (server, client) =
        exchange(config.tls_acceptor().expect("TLS"), connector(&cert, None)).await;
    assert_eq!(server.expect("server side"), *b"ping");
    assert_eq!(client.expect("client side").0, *b"pong");
}

#[tokio::test(flavor = "current_thread")]
async fn client_certificates_are_required_and_verified() {
    let dir = TempDir::new("mtls");
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "tcptrace test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let client_key = KeyPair::generate().expect("client key");
    let mut client_params =
        CertificateParams::new(vec!["prometheus".to_owned()]).expect("client params");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params.signed_by(&client_key, &issuer).expect("client cert");
    let client_key = client_key.serialize_pem();
    let client_cert = client_cert.pem();

    let (cert, key) = self_signed();
    dir.write("server.crt", &cert);
    dir.write("server.key", &key);
    dir.write("clients.crt", ca_cert.pem());
    let path = dir.write(
        "web.yml",
        "tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: clients.crt
",
    );
    let config = WebConfig::load(&path).expect("load");
    let acceptor = || config.tls_acceptor().expect("TLS");

    let with_cert = connector(&cert, Some((&client_cert, &client_key)));
    let (server, client) = exchange(acceptor(), with_cert).await;
    assert_eq!(server.expect("server side"), *b"ping");
    assert_eq!(client.expect("client side").0, *b"pong");

    let (server, _) = exchange(acceptor(), connector(&cert, None)).await;
    assert!(server.is_err(), "a client without a certificate got in");

    // Signed by no trusted CA: its own self-signed certificate.
    let (stray_cert, stray_key) = self_signed();
    let (server, _) = exchange(acceptor(), connector(&cert, Some((&stray_cert, &stray_key)))).await;
    assert!(server.is_err(), "a client with an untrusted certificate got in");

    // The same CA, optional: a client without a certificate gets in.
    let optional = dir.write(
        "optional.yml",
        "tls_server_config:
  cert_file: server.crt
  key_file: server.key
  client_auth_type: VerifyClientCertIfGiven
  client_ca: |
"
        .to_owned()
            + &ca_cert.pem().lines().map(|l| format!("    {l}\n")).collect::<String>(),
    );
    let config = WebConfig::load(&optional).expect("load");
    let (server, _) = exchange(config.tls_acceptor().expect("TLS"), connector(&cert, None)).await;
    assert_eq!(server.expect("server side"), *b"ping");
}

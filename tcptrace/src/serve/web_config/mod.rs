//! `--web-config FILE`: TLS and HTTP basic authentication for `tcptrace serve`, read from the
//! web configuration file of the Prometheus exporters (exporter-toolkit, as node_exporter reads
//! it).
//!
//! Why that format rather than flags of our own: operators already keep one such file per host,
//! their tooling writes it (configuration management roles, Helm charts, `htpasswd -nBC 10`),
//! and the Prometheus documentation describes it, so `tcptrace serve` is secured the way every
//! other exporter beside it is. For the same reason the parsing is as strict as
//! exporter-toolkit's `yaml.UnmarshalStrict`: an unknown or misspelled key is an error at
//! start-up — a typo in `basic_auth_users` must not leave the endpoint open — and options that
//! exporter-toolkit has but cannot be honoured with rustls are refused by name, never ignored.
//!
//! Passwords are bcrypt hashes, checked the way exporter-toolkit checks them: a request naming
//! an unknown user still pays for one bcrypt run (against a configured hash), so response times
//! do not tell which users exist, and bcrypt runs one request at a time, so a flood of bad
//! logins takes one core rather than all of them. bcrypt is slow on purpose (tens of
//! milliseconds at the usual cost of 10) while Prometheus sends the same credentials at every
//! scrape, so credentials that passed are remembered — as a SHA-256 digest, never the password,
//! in a small bounded cache — and later scrapes skip bcrypt. Only successes are remembered:
//! someone without a password then cannot push the entries of those who have one out of the
//! cache.
//!
//! Where this differs from exporter-toolkit (each deliberate, all failing closed at start-up):
//! files are read once by [`WebConfig::load`], not again at every request and handshake, so a
//! renewed certificate or a changed user list takes a restart (or a new `WebConfig`); client
//! certificates requested but not verified (`RequestClientCert`, `RequireAnyClientCert`),
//! `client_allowed_sans`, `rate_limit`, the P-521 curve and the CBC or RSA key exchange cipher
//! suites are refused as unsupported; TLS 1.0 and 1.1 do not exist in rustls, so a
//! `min_version` of `TLS10` or `TLS11` means TLS 1.2 and a `max_version` below `TLS12` is
//! refused; an empty `basic_auth_users` (which locks everyone out), a user name containing `:`
//! (which Basic authentication cannot carry), a `$2x$` hash and a client CA file holding an
//! unparsable certificate are refused; TLS offers ALPN `http/1.1` only, because `serve` speaks
//! HTTP/1.1 (`http2` is read and reported by [`WebConfig::http2`]).

use std::{
    collections::BTreeMap,
    fmt,
    fs::{self, File},
    io::{self, Read},
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Arc, Mutex, PoisonError},
};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use rustls::{
    RootCertStore, ServerConfig, SupportedCipherSuite, SupportedProtocolVersion,
    crypto::{CryptoProvider, SupportedKxGroup, ring as ring_provider},
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::{Deserialize, Deserializer, de};
use tokio_rustls::TlsAcceptor;

/// The `WWW-Authenticate` value of a 401 answer, as exporter-toolkit sends it (no realm), so
/// browsers and `curl --anyauth` know to offer Basic credentials.
pub const WWW_AUTHENTICATE: &str = "Basic";

/// Largest file read (the config, certificates, keys, CAs): real ones are a few KiB, and the
/// cap keeps a wrong path (a log, a disk image) from being read into memory.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Credentials remembered after bcrypt accepted them. A host is scraped by a handful of
/// Prometheus servers with one set of credentials each; 64 leaves room and bounds the memory
/// and the linear search.
const AUTH_CACHE_ENTRIES: usize = 64;

/// Longest `Authorization` value decoded: far above any real user name and password, and it
/// bounds the work a hostile header can cause before being refused.
const MAX_AUTHORIZATION_BYTES: usize = 4096;

/// bcrypt's own bounds on the cost (log2 of the rounds); Go's bcrypt refuses the same.
const BCRYPT_COSTS: std::ops::RangeInclusive<u32> = 4..=31;

/// The headers exporter-toolkit lets `http_server_config.headers` set, with the values it
/// allows where it restricts them (exact, case-sensitive, as there), so one file serves both.
const EXTRA_HEADERS: &[(&str, &[&str])] = &[
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

/// What went wrong loading a web config. Every message is one line that starts with the
/// config file's path, so it can be printed as is at start-up.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("web config {path:?}: {error}")]
    Read { path: PathBuf, error: io::Error },
    #[error("web config {path:?}: not a regular file")]
    NotRegularFile { path: PathBuf },
    #[error("web config {path:?}: larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    /// Not YAML, not the expected shape, or an unknown or repeated key (named in `message`).
    #[error("web config {path:?}: {message}")]
    Syntax { path: PathBuf, message: String },
    /// A certificate, key or CA (named by `origin`: its key and, for a file, its path) that
    /// cannot be read or holds nothing usable.
    #[error("web config {path:?}: tls_server_config.{origin}: {reason}")]
    TlsFile { path: PathBuf, origin: String, reason: String },
    /// rustls refused the settings (e.g. `cipher_suites` leave none for the versions allowed).
    #[error("web config {path:?}: tls_server_config: {error}")]
    Tls { path: PathBuf, error: rustls::Error },
    #[error("web config {path:?}: basic_auth_users: user {user:?}: {reason}")]
    User { path: PathBuf, user: String, reason: String },
    /// An exporter-toolkit option that tcptrace does not implement.
    #[error("web config {path:?}: {option} is not supported by tcptrace: {why}")]
    Unsupported { path: PathBuf, option: String, why: &'static str },
    /// A value exporter-toolkit would refuse too (or that cannot work, see the module doc).
    #[error("web config {path:?}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A loaded and checked web config; cheap to share behind an `Arc` across connection tasks.
pub struct WebConfig {
    tls: Option<Arc<ServerConfig>>,
    auth: Option<BasicAuth>,
    headers: Vec<(String, String)>,
    http2: bool,
}

impl WebConfig {
    /// Reads and checks the file, and the certificate, key and CA files it names (relative
    /// paths are relative to the file's directory, as in exporter-toolkit): one-line errors
    /// that name the file and what is wrong.
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let bytes = read_capped(path).map_err(|e| match e {
            ReadError::Io(error) => WebConfigError::Read { path: path.to_owned(), error },
            ReadError::NotRegular => WebConfigError::NotRegularFile { path: path.to_owned() },
            ReadError::TooLarge => WebConfigError::TooLarge { path: path.to_owned() },
        })?;
        // An empty file (or one of comments only) is a document of nothing: all defaults,
        // as for exporter-toolkit.
        let file: Option<FileConfig> = serde_norway::from_slice(&bytes).map_err(|e| {
            WebConfigError::Syntax { path: path.to_owned(), message: one_line(&e.to_string()) }
        })?;
        let file = file.unwrap_or_default();
        let ctx = Ctx { path, dir: path.parent().unwrap_or(Path::new("")) };

        if file.rate_limit.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ctx.unsupported(
                "rate_limit".to_owned(),
                "limit the request rate in a reverse proxy or in Prometheus",
            ));
        }
        let http = file.http_server_config.unwrap_or_default();
        let headers = check_headers(&ctx, http.headers.map(|h| h.0).unwrap_or_default())?;
        let auth = file.basic_auth_users.map(|users| BasicAuth::new(&ctx, users.0)).transpose()?;
        let tls = match file.tls_server_config {
            Some(tls) => tls_server_config(&ctx, tls)?,
            None => None,
        };
        // exporter-toolkit's default: HTTP/2 on unless turned off.
        Ok(Self { tls, auth, headers, http2: http.http2.unwrap_or(true) })
    }

    /// The TLS acceptor when `tls_server_config` is set (else the server speaks plain HTTP).
    /// It offers ALPN `http/1.1` only.
    pub fn tls_acceptor(&self) -> Option<TlsAcceptor> {
        self.tls.clone().map(TlsAcceptor::from)
    }

    /// The rustls configuration behind [`Self::tls_acceptor`], for a server that wants to
    /// change what it offers (e.g. add `h2` to the ALPN protocols when it speaks HTTP/2).
    pub fn tls_server_config(&self) -> Option<Arc<ServerConfig>> {
        self.tls.clone()
    }

    /// Whether requests need Basic credentials (`basic_auth_users` is set).
    pub fn requires_auth(&self) -> bool {
        self.auth.is_some()
    }

    /// Whether an `Authorization` header value (raw bytes, may be absent, garbage or hostile)
    /// grants access: always when no users are configured, else `Basic base64(user:password)`
    /// with the password matching the user's bcrypt hash.
    ///
    /// This blocks for a bcrypt run (tens of milliseconds at cost 10; callers wait their turn
    /// behind one another) unless the credentials passed recently: on an async runtime, answer
    /// with [`Self::authorized_cached`] first and call this from `spawn_blocking` when it has no
    /// answer.
    pub fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        let Some(auth) = &self.auth else { return true };
        let Some(credentials) = authorization.and_then(basic_credentials) else { return false };
        auth.check(&credentials)
    }

    /// The answer of [`Self::authorized`] when it needs no bcrypt run: no users configured, no
    /// usable Basic credentials in the header, or credentials that passed recently. `None`
    /// means bcrypt has to decide.
    pub fn authorized_cached(&self, authorization: Option<&[u8]>) -> Option<bool> {
        let Some(auth) = &self.auth else { return Some(true) };
        let Some(credentials) = authorization.and_then(basic_credentials) else {
            return Some(false);
        };
        auth.is_cached(&credentials.cache_key()).then_some(true)
    }

    /// The `http_server_config.headers` to set on every response, names and values checked
    /// (exporter-toolkit's allowed names; visible ASCII values, so they convert to header
    /// values without error).
    pub fn response_headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// `http_server_config.http2` (default true). Read for compatibility; the acceptor does
    /// not offer HTTP/2 whatever it says (see [`Self::tls_acceptor`]).
    pub fn http2(&self) -> bool {
        self.http2
    }
}

impl fmt::Debug for WebConfig {
    // By hand so that logging a config never prints password hashes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("users", &self.auth.as_ref().map(|a| a.users.keys().collect::<Vec<_>>()))
            .field("headers", &self.headers)
            .field("http2", &self.http2)
            .finish()
    }
}

/// The file as written. Every level refuses unknown keys, as exporter-toolkit's strict
/// parsing does.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    tls_server_config: Option<TlsServerConfig>,
    http_server_config: Option<HttpServerConfig>,
    basic_auth_users: Option<UniqueMap>,
    /// Only to refuse it by name when set (a typed struct would reject it as unknown).
    rate_limit: Option<serde_norway::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsServerConfig {
    cert_file: Option<String>,
    key_file: Option<String>,
    /// Inline PEM, used when `cert_file` is not set.
    cert: Option<String>,
    /// Inline PEM, used when `key_file` is not set.
    key: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    /// Inline PEM, used when `client_ca_file` is not set.
    client_ca: Option<String>,
    cipher_suites: Option<Vec<String>>,
    curve_preferences: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    /// Go has ignored it since 1.17; accepted so existing files load.
    #[expect(dead_code, reason = "accepted for compatibility, has no effect")]
    prefer_server_cipher_suites: Option<bool>,
    client_allowed_sans: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpServerConfig {
    http2: Option<bool>,
    headers: Option<UniqueMap>,
}

/// A map of strings that refuses a repeated key (YAML forbids them, Go's parser refuses them,
/// and serde would keep the last one silently: a second `alice:` must not replace the first
/// unnoticed).
#[derive(Debug, Default)]
struct UniqueMap(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for UniqueMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = UniqueMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of names to strings")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueMap, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((key, value)) = map.next_entry::<String, String>()? {
                    if out.contains_key(&key) {
                        return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
                    }
                    out.insert(key, value);
                }
                Ok(UniqueMap(out))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// The config file being loaded, for resolving paths and naming it in errors.
struct Ctx<'a> {
    path: &'a Path,
    dir: &'a Path,
}

impl Ctx<'_> {
    fn invalid(&self, message: impl Into<String>) -> WebConfigError {
        WebConfigError::Invalid { path: self.path.to_owned(), message: message.into() }
    }

    fn unsupported(&self, option: String, why: &'static str) -> WebConfigError {
        WebConfigError::Unsupported { path: self.path.to_owned(), option, why }
    }

    fn tls_file(&self, origin: &str, reason: impl Into<String>) -> WebConfigError {
        WebConfigError::TlsFile {
            path: self.path.to_owned(),
            origin: origin.to_owned(),
            reason: reason.into(),
        }
    }

    /// exporter-toolkit's rule: relative to the config file's directory.
    fn resolve(&self, file: &str) -> PathBuf {
        let file = Path::new(file);
        if file.is_absolute() { file.to_owned() } else { self.dir.join(file) }
    }

    /// The PEM text of a file key (`cert_file`) or else of its inline twin (`cert`), with how to
    /// name it in errors; `None` when neither is set. Empty strings count as unset, as in Go.
    fn pem(
        &self,
        file_key: &str,
        file: Option<String>,
        inline_key: &str,
        inline: Option<String>,
    ) -> Result<Option<(Vec<u8>, String)>, WebConfigError> {
        if let Some(file) = nonempty(file) {
            let file = self.resolve(&file);
            let origin = format!("{file_key} {file:?}");
            let bytes = read_capped(&file).map_err(|e| self.tls_file(&origin, e.to_string()))?;
            return Ok(Some((bytes, origin)));
        }
        Ok(nonempty(inline).map(|pem| (pem.into_bytes(), inline_key.to_owned())))
    }
}

fn nonempty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

enum ReadError {
    Io(io::Error),
    NotRegular,
    TooLarge,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => e.fmt(f),
            Self::NotRegular => f.write_str("not a regular file"),
            Self::TooLarge => write!(f, "larger than {MAX_FILE_BYTES} bytes"),
        }
    }
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// Reads a whole regular file of at most [`MAX_FILE_BYTES`].
fn read_capped(path: &Path) -> Result<Vec<u8>, ReadError> {
    // Checked before opening: opening a FIFO would block until something writes to it.
    if !fs::metadata(path)?.is_file() {
        return Err(ReadError::NotRegular);
    }
    let file = File::open(path)?;
    // Checked again on what was opened, in case the path changed in between.
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(ReadError::NotRegular);
    }
    if metadata.len() > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge);
    }
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    // The file can grow while being read: `take` holds the cap whatever the size said.
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if u64::try_from(bytes.len()).map_or(true, |n| n > MAX_FILE_BYTES) {
        return Err(ReadError::TooLarge);
    }
    Ok(bytes)
}

fn check_headers(
    ctx: &Ctx<'_>,
    headers: BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, WebConfigError> {
    for (name, value) in &headers {
        let Some((_, allowed)) = EXTRA_HEADERS.iter().find(|(known, _)| known == name) else {
            return Err(ctx.invalid(format!(
                "http_server_config.headers: HTTP header {name:?} can not be configured"
            )));
        };
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            return Err(ctx.invalid(format!(
                "http_server_config.headers: invalid value for {name}: expected one of \
                 {allowed:?}, got {value:?}"
            )));
        }
        // What an HTTP library accepts as a header value without complaint; a control
        // character would otherwise surface as an error at the first response.
        if !value.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
            return Err(ctx.invalid(format!(
                "http_server_config.headers: value of {name} must be visible ASCII"
            )));
        }
    }
    Ok(headers.into_iter().collect())
}

/// The users and what checking them needs.
struct BasicAuth {
    users: BTreeMap<String, String>,
    /// The hash checked for a user that does not exist, so that the answer takes as long as
    /// for one that does: the highest-cost configured hash (exporter-toolkit uses a fixed hash
    /// of cost 10, which differs in time from users of other costs).
    decoy: String,
    cache: Mutex<AuthCache>,
    /// One bcrypt run at a time (exporter-toolkit's `bcryptMtx`): bcrypt is CPU-bound, and
    /// bad logins must not be able to occupy every core.
    bcrypt_turn: Mutex<()>,
}

impl BasicAuth {
    fn new(ctx: &Ctx<'_>, users: BTreeMap<String, String>) -> Result<Self, WebConfigError> {
        let mut decoy: Option<(u32, &String)> = None;
        for (user, hash) in &users {
            let user_error = |reason: String| WebConfigError::User {
                path: ctx.path.to_owned(),
                user: user.clone(),
                reason,
            };
            if user.contains(':') {
                return Err(user_error(
                    "a user name cannot contain ':' (Basic authentication splits there)".into(),
                ));
            }
            let cost = bcrypt_cost(hash).map_err(user_error)?;
            if decoy.is_none_or(|(highest, _)| cost > highest) {
                decoy = Some((cost, hash));
            }
        }
        let Some((_, decoy)) = decoy else {
            return Err(ctx.invalid(
                "basic_auth_users is empty, which would refuse every request; remove the key to \
                 serve without authentication",
            ));
        };
        let decoy = decoy.clone();
        Ok(Self {
            users,
            decoy,
            cache: Mutex::new(AuthCache::default()),
            bcrypt_turn: Mutex::new(()),
        })
    }

    fn check(&self, credentials: &Credentials) -> bool {
        let key = credentials.cache_key();
        if self.is_cached(&key) {
            return true;
        }
        let _turn = self.bcrypt_turn.lock().unwrap_or_else(PoisonError::into_inner);
        // The same credentials may have passed while this request waited for its turn (a
        // scraper's retries, parallel scrapes of a restarted server).
        if self.is_cached(&key) {
            return true;
        }
        let hash = std::str::from_utf8(credentials.user()).ok().and_then(|u| self.users.get(u));
        // bcrypt runs for unknown users too, against the decoy, so that timing does not tell
        // them apart; only the hash format can fail, and it was checked at load.
        let matches =
            bcrypt::verify(credentials.password(), hash.unwrap_or(&self.decoy)).unwrap_or(false);
        let granted = matches && hash.is_some();
        if granted {
            self.cache.lock().unwrap_or_else(PoisonError::into_inner).insert(key);
        }
        granted
    }

    fn is_cached(&self, key: &CacheKey) -> bool {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).contains(key)
    }
}

/// The cost of a bcrypt hash as exporter-toolkit accepts it (Go's `bcrypt.Cost`), or why not.
fn bcrypt_cost(hash: &str) -> Result<u32, String> {
    if !["$2a$", "$2b$", "$2y$"].iter().any(|prefix| hash.starts_with(prefix)) {
        return Err("not a bcrypt hash: expected $2y$, $2b$ or $2a$ (as `htpasswd -nBC 10 \
                    USER` writes)"
            .into());
    }
    let parts = bcrypt::HashParts::from_str(hash).map_err(|e| format!("bad bcrypt hash: {e}"))?;
    let cost = parts.get_cost();
    if !BCRYPT_COSTS.contains(&cost) {
        return Err(format!(
            "bcrypt cost {cost} is outside {}..={}",
            BCRYPT_COSTS.start(),
            BCRYPT_COSTS.end()
        ));
    }
    Ok(cost)
}

type CacheKey = [u8; 32];

/// The decoded `user:password` of a Basic `Authorization` header.
struct Credentials {
    decoded: Vec<u8>,
    colon: usize,
}

impl Credentials {
    fn user(&self) -> &[u8] {
        self.decoded.get(..self.colon).unwrap_or_default()
    }

    fn password(&self) -> &[u8] {
        self.decoded.get(self.colon + 1..).unwrap_or_default()
    }

    /// A digest rather than the credentials, so the cache never holds a password.
    fn cache_key(&self) -> CacheKey {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.decoded);
        let mut key = [0; 32];
        for (k, d) in key.iter_mut().zip(digest.as_ref()) {
            *k = *d;
        }
        key
    }
}

/// `Basic base64(user:password)` (scheme case-insensitive, standard padded base64, like Go's
/// `Request.BasicAuth`), or `None` for anything else.
fn basic_credentials(header: &[u8]) -> Option<Credentials> {
    if header.len() > MAX_AUTHORIZATION_BYTES {
        return None;
    }
    let (scheme, encoded) = header.trim_ascii().split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let decoded = BASE64.decode(encoded.trim_ascii_start()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some(Credentials { decoded, colon })
}

/// Digests of credentials that passed, oldest replaced first once full.
#[derive(Default)]
struct AuthCache {
    keys: Vec<CacheKey>,
    next: usize,
}

impl AuthCache {
    fn contains(&self, key: &CacheKey) -> bool {
        self.keys.contains(key)
    }

    fn insert(&mut self, key: CacheKey) {
        if self.contains(&key) {
            return;
        }
        if self.keys.len() < AUTH_CACHE_ENTRIES {
            self.keys.push(key);
        } else if let Some(slot) = self.keys.get_mut(self.next) {
            *slot = key;
            self.next = (self.next + 1) % AUTH_CACHE_ENTRIES;
        }
    }
}

/// The rustls server configuration, or `None` when `tls_server_config` enables nothing (no
/// certificate, key, CA or client auth type: plain HTTP, as in exporter-toolkit).
fn tls_server_config(
    ctx: &Ctx<'_>,
    tls: TlsServerConfig,
) -> Result<Option<Arc<ServerConfig>>, WebConfigError> {
    let client_auth_type = nonempty(tls.client_auth_type);
    let enabled = [&tls.cert_file, &tls.cert, &tls.key_file, &tls.key]
        .into_iter()
        .chain([&tls.client_ca_file, &tls.client_ca, &client_auth_type])
        .any(|v| v.as_ref().is_some_and(|s| !s.is_empty()));
    if !enabled {
        return Ok(None);
    }
    if tls.client_allowed_sans.is_some() {
        return Err(ctx.unsupported(
            "tls_server_config.client_allowed_sans".into(),
            "use a client CA that signs only the allowed clients",
        ));
    }

    let versions = protocol_versions(ctx, tls.min_version, tls.max_version)?;
    let provider = Arc::new(crypto_provider(ctx, tls.cipher_suites, tls.curve_preferences)?);

    let client_ca = ctx.pem("client_ca_file", tls.client_ca_file, "client_ca", tls.client_ca)?;
    let verifier = client_verifier(ctx, client_auth_type.as_deref(), client_ca, &provider)?;

    let Some((cert_pem, cert_origin)) = ctx.pem("cert_file", tls.cert_file, "cert", tls.cert)?
    else {
        return Err(ctx.invalid("tls_server_config: missing one of cert or cert_file"));
    };
    let Some((key_pem, key_origin)) = ctx.pem("key_file", tls.key_file, "key", tls.key)? else {
        return Err(ctx.invalid("tls_server_config: missing one of key or key_file"));
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ctx.tls_file(&cert_origin, e.to_string()))?;
    if chain.is_empty() {
        return Err(ctx.tls_file(&cert_origin, "no PEM certificate found"));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => ctx.tls_file(
            &key_origin,
            "no PEM private key found (PKCS#8, PKCS#1 RSA or SEC1 EC; encrypted keys are not \
             supported)",
        ),
        e => ctx.tls_file(&key_origin, e.to_string()),
    })?;

    let tls_error = |error| WebConfigError::Tls { path: ctx.path.to_owned(), error };
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(tls_error)?;
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    // Checks that the key is the certificate's, as Go's tls.X509KeyPair does.
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            ctx.tls_file(&key_origin, format!("not the private key of {cert_origin}"))
        }
        e => tls_error(e),
    })?;
    // `serve` speaks HTTP/1.1 only; offering h2 would make clients that prefer it fail.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

fn protocol_versions(
    ctx: &Ctx<'_>,
    min: Option<String>,
    max: Option<String>,
) -> Result<Vec<&'static SupportedProtocolVersion>, WebConfigError> {
    let parse = |key: &str, value: Option<String>, default: u8| match nonempty(value).as_deref() {
        None => Ok(default),
        Some("TLS10") => Ok(10),
        Some("TLS11") => Ok(11),
        Some("TLS12") => Ok(12),
        Some("TLS13") => Ok(13),
        Some(other) => {
            Err(ctx.invalid(format!("tls_server_config.{key}: unknown TLS version {other:?}")))
        }
    };
    // exporter-toolkit's defaults.
    let min = parse("min_version", min, 12)?;
    let max = parse("max_version", max, 13)?;
    if max < 12 {
        return Err(ctx.unsupported(
            format!("tls_server_config.max_version TLS1{}", max - 10),
            "rustls speaks TLS 1.2 and 1.3 only",
        ));
    }
    if min > max {
        return Err(ctx.invalid("tls_server_config: min_version is above max_version"));
    }
    let mut versions = Vec::new();
    if min <= 12 {
        versions.push(&rustls::version::TLS12);
    }
    if max >= 13 {
        versions.push(&rustls::version::TLS13);
    }
    Ok(versions)
}

/// The ring provider, its TLS 1.2 suites and key exchange groups narrowed as configured.
fn crypto_provider(
    ctx: &Ctx<'_>,
    cipher_suites: Option<Vec<String>>,
    curves: Option<Vec<String>>,
) -> Result<CryptoProvider, WebConfigError> {
    let mut provider = ring_provider::default_provider();
    let cipher_suites = cipher_suites.unwrap_or_default();
    if !cipher_suites.is_empty() {
        // As in Go, the list narrows TLS 1.2 only: TLS 1.3 suites are not configurable, and
        // their names are accepted and change nothing.
        let mut tls12 = Vec::new();
        for name in &cipher_suites {
            match go_cipher_suite(name) {
                Some(Some(suite)) => tls12.push(suite),
                Some(None) => {}
                None => {
                    return Err(ctx.unsupported(
                        format!("tls_server_config.cipher_suites {name:?}"),
                        "the TLS 1.2 suites available are TLS_ECDHE_{ECDSA,RSA}_WITH_\
                         {AES_128_GCM_SHA256,AES_256_GCM_SHA384,CHACHA20_POLY1305_SHA256}",
                    ));
                }
            }
        }
        provider.cipher_suites.retain(|s| matches!(s, SupportedCipherSuite::Tls13(_)));
        provider.cipher_suites.extend(tls12);
    }
    let curves = curves.unwrap_or_default();
    if !curves.is_empty() {
        let mut groups: Vec<&'static dyn SupportedKxGroup> = Vec::new();
        for name in &curves {
            groups.push(match name.as_str() {
                "X25519" => ring_provider::kx_group::X25519,
                "CurveP256" => ring_provider::kx_group::SECP256R1,
                "CurveP384" => ring_provider::kx_group::SECP384R1,
                "CurveP521" => {
                    return Err(ctx.unsupported(
                        "tls_server_config.curve_preferences \"CurveP521\"".into(),
                        "the curves available are X25519, CurveP256 and CurveP384",
                    ));
                }
                other => {
                    return Err(ctx.invalid(format!(
                        "tls_server_config.curve_preferences: unknown curve {other:?}"
                    )));
                }
            });
        }
        provider.kx_groups = groups;
    }
    Ok(provider)
}

/// A cipher suite by its Go name: `Some(Some(_))` a TLS 1.2 suite rustls has, `Some(None)` a
/// TLS 1.3 suite (always on), `None` unknown or not available.
fn go_cipher_suite(name: &str) -> Option<Option<SupportedCipherSuite>> {
    use rustls::crypto::ring::cipher_suite as cs;
    Some(Some(match name {
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => {
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_AES_128_GCM_SHA256" | "TLS_AES_256_GCM_SHA384" | "TLS_CHACHA20_POLY1305_SHA256" => {
            return Some(None);
        }
        _ => return None,
    }))
}

/// The verifier of client certificates for `client_auth_type`, `None` for no client auth.
fn client_verifier(
    ctx: &Ctx<'_>,
    client_auth_type: Option<&str>,
    client_ca: Option<(Vec<u8>, String)>,
    provider: &Arc<CryptoProvider>,
) -> Result<Option<Arc<dyn ClientCertVerifier>>, WebConfigError> {
    let optional = match client_auth_type.unwrap_or("NoClientCert") {
        "NoClientCert" => {
            if client_ca.is_some() {
                return Err(ctx.invalid(
                    "tls_server_config: client CAs are configured without a client_auth_type \
                     (set RequireAndVerifyClientCert)",
                ));
            }
            return Ok(None);
        }
        "RequireAndVerifyClientCert" => false,
        "VerifyClientCertIfGiven" => true,
        unverified @ ("RequestClientCert" | "RequireAnyClientCert" | "RequireClientCert") => {
            return Err(ctx.unsupported(
                format!("tls_server_config.client_auth_type {unverified}"),
                "rustls verifies every client certificate it accepts; use \
                 RequireAndVerifyClientCert with client_ca_file",
            ));
        }
        other => {
            return Err(
                ctx.invalid(format!("tls_server_config: invalid client_auth_type {other:?}"))
            );
        }
    };
    let Some((pem, origin)) = client_ca else {
        return Err(ctx.invalid(format!(
            "tls_server_config: client_auth_type {} needs client_ca_file or client_ca",
            client_auth_type.unwrap_or_default()
        )));
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| ctx.tls_file(&origin, e.to_string()))?;
        roots.add(cert).map_err(|e| ctx.tls_file(&origin, e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ctx.tls_file(&origin, "no PEM certificate found"));
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let builder = if optional { builder.allow_unauthenticated() } else { builder };
    let verifier = builder.build().map_err(|e| ctx.tls_file(&origin, e.to_string()))?;
    Ok(Some(verifier))
}

#[cfg(test)]
mod tests;

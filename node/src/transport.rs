//! QUIC transport with mutual TLS 1.3, where each side proves an ed25519 member key.
//!
//! **Handshake.** Each node presents a self-signed X.509 certificate made (with rcgen) from its
//! ed25519 member key. There is no CA chain: the key is the identity, so the server name and the
//! certificate's validity dates are ignored. On both sides a custom verifier takes the peer's raw
//! ed25519 public key from the certificate, checks the TLS 1.3 handshake signature with ED25519
//! only, and asks the [`Admit`] callback whether that key may talk to us.
//!
//! **Admission.** Session resumption and tickets are disabled on both sides, because a resumed
//! session skips the verifier. In TLS 1.3 a refused *client* may still see `connect()` succeed;
//! the refusal shows on its first stream, so a finished handshake alone does not mean admission.
//!
//! **Framing** is the protocol's (`cpis_protocol::wire`), byte for byte: [`write_frame`] writes
//! what `wire::encode_frame` made, and [`read_message`] reads the 4-byte header, asks
//! `wire::frame_len` (which refuses an oversized frame before anything is allocated), reads the
//! payload and decodes it with `wire::decode_payload`. The simulator uses the same two functions
//! of `wire`, so it exercises the framing that production runs.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cpis_protocol::wire::{self, FRAME_HEADER_BYTES, Message, WireError};
use ed25519_dalek::pkcs8::{DecodePublicKey, EncodePrivateKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use quinn::{ReadExactError, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ParsedCertificate};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, PeerMisbehaved, SignatureScheme};

/// ALPN protocol identifier; both sides must offer it.
pub const ALPN: &[u8] = b"cpis/1";
/// Server name used when connecting (not checked: the key is the identity).
pub const SERVER_NAME: &str = "cpis";

/// A peer silent this long is gone (keep-alives make silence mean death).
const IDLE_TIMEOUT_MS: u32 = 10_000;
const KEEP_ALIVE: Duration = Duration::from_secs(2);
const STREAM_WINDOW: u32 = 8 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;
/// Most streams of each kind a peer may have open at once.
const STREAMS_MAX: u32 = 16;

/// Admission callback: given a peer's raw ed25519 public key, `Err(reason)` refuses it.
///
/// It runs before the peer has proved possession of the key (the handshake signature is checked
/// afterwards), so it must have no side effects. quinn sends the refusal text to the refused peer
/// in its CONNECTION_CLOSE frame: keep `reason` short and free of anything confidential.
pub type Admit = Arc<dyn Fn(&[u8; 32]) -> Result<(), String> + Send + Sync>;

/// Errors from the QUIC transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The TLS configuration lacks the cipher suite QUIC needs for its initial packets.
    #[error("QUIC crypto configuration: {0}")]
    QuicCrypto(#[from] NoInitialCipherSuite),
    /// The member key could not be encoded as PKCS#8.
    #[error("key encoding: {0}")]
    KeyEncoding(String),
    /// The self-signed certificate could not be generated.
    #[error("certificate generation: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The UDP socket could not be bound (or no tokio runtime is running).
    #[error("bind: {0}")]
    Bind(#[source] std::io::Error),
    /// A connection attempt could not be started.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed (including refusal by the peer).
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing to a stream failed.
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
}

/// Why a frame could not be read from a stream.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The bytes are not a frame of this protocol (too large, another version, malformed).
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The stream ended in the middle of a frame (header or payload).
    #[error("truncated frame: stream ended after {got} of {expected} bytes")]
    Truncated {
        /// Bytes expected for the header or payload.
        expected: usize,
        /// Bytes received before the stream ended.
        got: usize,
    },
    /// Reading from the stream failed (the connection was lost or reset).
    #[error("stream read: {0}")]
    Read(#[from] quinn::ReadError),
}

/// The admission reason carried inside a rustls certificate error.
#[derive(Debug, thiserror::Error)]
#[error("admission refused: {0}")]
struct Refused(String);

/// Verifies a peer's self-signed ed25519 certificate and asks [`Admit`] about its key.
struct KeyVerifier {
    admit: Admit,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for KeyVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyVerifier")
    }
}

impl KeyVerifier {
    fn new(admit: Admit, provider: &CryptoProvider) -> Self {
        let algorithms = provider.signature_verification_algorithms;
        Self { admit, algorithms }
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::General("unexpected certificate chain".into()));
        }
        let key =
            cert_public_key(end_entity).ok_or(rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        (self.admit)(&key).map_err(|reason| {
            let other = OtherError(Arc::new(Refused(reason)));
            rustls::Error::InvalidCertificate(CertificateError::Other(other))
        })
    }

    fn verify13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into());
        }
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General("TLS 1.2 is not supported".into()))
}

impl ServerCertVerifier for KeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for KeyVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The raw ed25519 public key in a certificate's SubjectPublicKeyInfo, if it has one.
fn cert_public_key(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let parsed = ParsedCertificate::try_from(cert).ok()?;
    let spki = parsed.subject_public_key_info();
    let key = VerifyingKey::from_public_key_der(spki.as_ref()).ok()?;
    Some(key.to_bytes())
}

/// A self-signed certificate and its PKCS#8 private key, both from the member seed.
fn identity(seed: &[u8; 32]) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TransportError> {
    let signing = SigningKey::from_bytes(seed);
    let pkcs8 = signing.to_pkcs8_der().map_err(|e| TransportError::KeyEncoding(e.to_string()))?;
    let key_der = PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec());
    let key_pair = rcgen::KeyPair::try_from(&key_der)?;
    let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])?;
    let cert = params.self_signed(&key_pair)?;
    Ok((vec![cert.der().clone()], PrivateKeyDer::Pkcs8(key_der)))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(VarInt::from_u32(IDLE_TIMEOUT_MS).into()))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        // A peer needs one stream per direction (members) or one per lookup session (settings):
        // a low limit bounds what one connection can make the other side hold.
        .max_concurrent_bidi_streams(VarInt::from_u32(STREAMS_MAX))
        .max_concurrent_uni_streams(VarInt::from_u32(STREAMS_MAX));
    Arc::new(transport)
}

/// Server side: presents our certificate, requires a client certificate admitted by `admit`.
pub fn server_config(seed: &[u8; 32], admit: Admit) -> Result<quinn::ServerConfig, TransportError> {
    let (certs, key) = identity(seed)?;
    let provider = provider();
    let verifier = Arc::new(KeyVerifier::new(admit, &provider));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.session_storage = Arc::new(NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    tls.max_early_data_size = 0;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    config.transport_config(transport_config());
    Ok(config)
}

/// Client side: presents our certificate, accepts a server whose key `admit` accepts.
pub fn client_config(seed: &[u8; 32], admit: Admit) -> Result<quinn::ClientConfig, TransportError> {
    let (certs, key) = identity(seed)?;
    let provider = provider();
    let verifier = Arc::new(KeyVerifier::new(admit, &provider));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(certs, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    tls.enable_early_data = false;
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    config.transport_config(transport_config());
    Ok(config)
}

/// An endpoint that both accepts connections and connects out (must run inside tokio).
pub fn endpoint(bind: SocketAddr, seed: &[u8; 32], admit: Admit) -> Result<quinn::Endpoint, TransportError> {
    let server = server_config(seed, admit.clone())?;
    let client = client_config(seed, admit)?;
    let mut endpoint = quinn::Endpoint::server(server, bind).map_err(TransportError::Bind)?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// Connects to `addr` with the endpoint's default client config and waits for the handshake.
///
/// A refused client may still get a connection here; the refusal then shows on the first stream.
pub async fn connect(endpoint: &quinn::Endpoint, addr: SocketAddr) -> Result<quinn::Connection, TransportError> {
    Ok(endpoint.connect(addr, SERVER_NAME)?.await?)
}

/// Connects to `addr` with `config` (not the endpoint's default) and waits for the handshake.
pub async fn connect_with(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
) -> Result<quinn::Connection, TransportError> {
    Ok(endpoint.connect_with(config, addr, SERVER_NAME)?.await?)
}

/// The peer's raw ed25519 public key, taken from its certificate.
pub fn peer_public_key(conn: &quinn::Connection) -> Option<[u8; 32]> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    cert_public_key(certs.first()?)
}

/// Writes one whole frame, as `wire::encode_frame` made it.
pub async fn write_frame(send: &mut quinn::SendStream, frame: &[u8]) -> Result<(), TransportError> {
    send.write_all(frame).await?;
    Ok(())
}

/// Reads and decodes one frame; `Ok(None)` if the stream ended cleanly before a header.
pub async fn read_message(recv: &mut quinn::RecvStream) -> Result<Option<Message>, FrameError> {
    Ok(read_frame(recv).await?.map(|(message, _)| message))
}

/// [`read_message`], with the frame's size in bytes (header included).
pub async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Option<(Message, usize)>, FrameError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(exact_error(e, header.len())),
    }
    let len = wire::frame_len(header)?;
    let mut payload = vec![0u8; len];
    recv.read_exact(&mut payload).await.map_err(|e| exact_error(e, len))?;
    Ok(Some((wire::decode_payload(&payload)?, FRAME_HEADER_BYTES + len)))
}

fn exact_error(error: ReadExactError, expected: usize) -> FrameError {
    match error {
        ReadExactError::FinishedEarly(got) => FrameError::Truncated { expected, got },
        ReadExactError::ReadError(e) => FrameError::Read(e),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::time::timeout;

    const WAIT: Duration = Duration::from_secs(10);

    fn local() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    fn seed(n: u8) -> [u8; 32] {
        [n; 32]
    }

    fn public(n: u8) -> [u8; 32] {
        SigningKey::from_bytes(&seed(n)).verifying_key().to_bytes()
    }

    /// Admits only the listed keys and counts calls.
    fn allow(keys: Vec<[u8; 32]>, calls: Arc<AtomicUsize>) -> Admit {
        Arc::new(move |key| {
            calls.fetch_add(1, Ordering::SeqCst);
            if keys.contains(key) { Ok(()) } else { Err("not a member".into()) }
        })
    }

    fn open(keys: Vec<[u8; 32]>) -> Admit {
        allow(keys, Arc::new(AtomicUsize::new(0)))
    }

    /// Two mutually admitted endpoints and the connection between them (client, server).
    pub(crate) async fn pair() -> (quinn::Endpoint, quinn::Endpoint, quinn::Connection, quinn::Connection) {
        let a = endpoint(local(), &seed(1), open(vec![public(2)])).unwrap();
        let b = endpoint(local(), &seed(2), open(vec![public(1)])).unwrap();
        let addr = b.local_addr().unwrap();
        let accept = async { b.accept().await.unwrap().await.unwrap() };
        let (client, server) = timeout(WAIT, async { tokio::join!(connect(&a, addr), accept) }).await.unwrap();
        (a, b, client.unwrap(), server)
    }

    fn sync(version: u64) -> Message {
        Message::Sync { directory_version: version, marks: vec![] }
    }

    #[tokio::test]
    async fn admitted_peers_exchange_protocol_frames_both_ways() {
        let (_a, _b, client, server) = pair().await;
        assert_eq!(peer_public_key(&client), Some(public(2)));
        assert_eq!(peer_public_key(&server), Some(public(1)));

        let serve = tokio::spawn(async move {
            let (mut send, mut recv) = server.accept_bi().await.unwrap();
            let got = read_message(&mut recv).await.unwrap();
            write_frame(&mut send, &wire::encode_frame(&sync(2))).await.unwrap();
            send.finish().unwrap();
            send.stopped().await.unwrap();
            got
        });
        let (mut send, mut recv) = timeout(WAIT, client.open_bi()).await.unwrap().unwrap();
        write_frame(&mut send, &wire::encode_frame(&sync(1))).await.unwrap();
        send.finish().unwrap();
        let reply = timeout(WAIT, read_message(&mut recv)).await.unwrap();
        assert_eq!(reply.unwrap(), Some(sync(2)));
        let end = timeout(WAIT, read_message(&mut recv)).await.unwrap();
        assert!(end.unwrap().is_none(), "clean end of stream gives None");
        let got = timeout(WAIT, serve).await.unwrap().unwrap();
        assert_eq!(got, Some(sync(1)));
    }

    #[tokio::test]
    async fn node_stream_framing_is_the_protocols_byte_for_byte() {
        let (_a, _b, client, server) = pair().await;
        // What the node's writer puts on a stream, the protocol's decoder reads...
        let (mut send, _r) = client.open_bi().await.unwrap();
        write_frame(&mut send, &wire::encode_frame(&sync(7))).await.unwrap();
        send.finish().unwrap();
        let (_s, mut recv) = timeout(WAIT, server.accept_bi()).await.unwrap().unwrap();
        let raw = timeout(WAIT, recv.read_to_end(1 << 20)).await.unwrap().unwrap();
        assert_eq!(wire::decode_frame(&raw).unwrap(), sync(7));
        // ...and what the protocol's encoder makes, the node's reader reads.
        let (mut send, _r) = client.open_bi().await.unwrap();
        send.write_all(&wire::encode_frame(&sync(8))).await.unwrap();
        send.finish().unwrap();
        let (_s, mut recv) = timeout(WAIT, server.accept_bi()).await.unwrap().unwrap();
        assert_eq!(timeout(WAIT, read_message(&mut recv)).await.unwrap().unwrap(), Some(sync(8)));
    }

    #[tokio::test]
    async fn every_connection_goes_through_admission() {
        let client_calls = Arc::new(AtomicUsize::new(0));
        let server_calls = Arc::new(AtomicUsize::new(0));
        let a = endpoint(local(), &seed(1), allow(vec![public(2)], client_calls.clone())).unwrap();
        let b = endpoint(local(), &seed(2), allow(vec![public(1)], server_calls.clone())).unwrap();
        let addr = b.local_addr().unwrap();
        for round in 1..=3 {
            let accept = async { b.accept().await.unwrap().await.unwrap() };
            let (client, server) = timeout(WAIT, async { tokio::join!(connect(&a, addr), accept) }).await.unwrap();
            let client = client.unwrap();
            // Resumption would skip the verifiers: each side must have been asked again.
            assert_eq!(client_calls.load(Ordering::SeqCst), round);
            assert_eq!(server_calls.load(Ordering::SeqCst), round);
            client.close(VarInt::from_u32(0), b"done");
            server.close(VarInt::from_u32(0), b"done");
        }
    }

    #[tokio::test]
    async fn refused_client_cannot_complete_a_request() {
        let server_calls = Arc::new(AtomicUsize::new(0));
        let a = endpoint(local(), &seed(1), open(vec![public(2)])).unwrap();
        let b = endpoint(local(), &seed(2), allow(vec![], server_calls.clone())).unwrap();
        let addr = b.local_addr().unwrap();

        let serve = tokio::spawn(async move {
            let incoming = b.accept().await.unwrap();
            let handshake = incoming.await;
            assert!(handshake.is_err(), "server must not accept the connection");
            // No other connection may appear either.
            let again = timeout(Duration::from_millis(300), b.accept()).await;
            assert!(again.is_err(), "no further incoming connection expected");
        });
        let attempt = timeout(WAIT, async {
            let conn = connect(&a, addr).await.map_err(|e| e.to_string())?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            write_frame(&mut send, &wire::encode_frame(&sync(1))).await.map_err(|e| e.to_string())?;
            let _ = send.finish();
            read_message(&mut recv).await.map_err(|e| e.to_string())
        })
        .await
        .unwrap();
        assert!(attempt.is_err(), "request must fail, got {attempt:?}");
        timeout(WAIT, serve).await.unwrap().unwrap();
        assert!(server_calls.load(Ordering::SeqCst) >= 1, "admit was consulted");
    }

    #[tokio::test]
    async fn refused_server_fails_connect() {
        let client_calls = Arc::new(AtomicUsize::new(0));
        let a = endpoint(local(), &seed(1), allow(vec![], client_calls.clone())).unwrap();
        let b = endpoint(local(), &seed(2), open(vec![public(1)])).unwrap();
        let addr = b.local_addr().unwrap();

        let serve = tokio::spawn(async move {
            let incoming = b.accept().await.unwrap();
            assert!(incoming.await.is_err(), "server side handshake must fail");
        });
        let result = timeout(WAIT, connect(&a, addr)).await.unwrap();
        assert!(matches!(result, Err(TransportError::Connection(_))), "connect must fail, got {result:?}");
        timeout(WAIT, serve).await.unwrap().unwrap();
        assert!(client_calls.load(Ordering::SeqCst) >= 1, "admit was consulted");
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_before_the_body() {
        let (_a, _b, client, server) = pair().await;
        let (mut send, _recv) = client.open_bi().await.unwrap();
        send.write_all(&((wire::FRAME_BYTES_MAX + 1) as u32).to_be_bytes()).await.unwrap();
        send.write_all(b"body").await.unwrap();
        let (_send, mut recv) = timeout(WAIT, server.accept_bi()).await.unwrap().unwrap();
        let result = timeout(WAIT, read_message(&mut recv)).await.unwrap();
        assert!(matches!(result, Err(FrameError::Wire(WireError::FrameTooLarge { .. }))), "{result:?}");
        // The body was left unread on the stream.
        let mut rest = [0u8; 4];
        timeout(WAIT, recv.read_exact(&mut rest)).await.unwrap().unwrap();
        assert_eq!(&rest, b"body");
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error() {
        let (_a, _b, client, server) = pair().await;
        let (mut send, _recv) = client.open_bi().await.unwrap();
        send.write_all(&100u32.to_be_bytes()).await.unwrap();
        send.write_all(&[7u8; 10]).await.unwrap();
        send.finish().unwrap();
        let (_send, mut recv) = timeout(WAIT, server.accept_bi()).await.unwrap().unwrap();
        let result = timeout(WAIT, read_message(&mut recv)).await.unwrap();
        assert!(matches!(result, Err(FrameError::Truncated { expected: 100, got: 10 })));
    }
}

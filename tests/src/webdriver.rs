//! A minimal W3C WebDriver client for browser tests: it starts `chromedriver` on a port the OS
//! chose, opens one headless Chromium session with a fresh profile in a temporary folder, and
//! speaks hand-written HTTP/1.1 to it (one connection per command, `Connection: close`).
//!
//! Dropping a [`Browser`] ends its session (if [`Browser::quit`] was not called) and kills
//! `chromedriver`.

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The Chromium that Debian's `chromium` package installs.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// The driver that Debian's `chromium-driver` package installs.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The key under which WebDriver names an element.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// The longest any one command may take (a page load, a script, a screenshot).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);
/// The longest `chromedriver` may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The largest answer read from the driver (a full-page screenshot fits easily).
const ANSWER_MAX: usize = 64 << 20;

/// One element of the current page, as the driver names it.
#[derive(Clone, Debug)]
pub struct Element(String);

/// A running `chromedriver` with one Chromium session.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: Option<String>,
    folder: tempfile::TempDir,
}

/// A TCP port on 127.0.0.1 that the OS just handed out (and is free again).
fn free_tcp_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind a TCP port")?;
    Ok(listener.local_addr()?.port())
}

/// Whether `raw` holds a whole HTTP/1.1 response: its headers and as much body as its
/// `Content-Length` says, or a chunked body's last chunk. (With neither, the stream's end ends it.)
fn answer_complete(raw: &[u8]) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_string())
    };
    if let Some(length) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        return body.len() >= length;
    }
    if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        return parse_response(raw).is_ok();
    }
    false
}

/// Splits an HTTP/1.1 response into its status and body (de-chunked if need be).
fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| anyhow!("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let body = &raw[split + 4..];
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| anyhow!("no status in {head:?}"))?;
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
        })
    });
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body;
    // Each chunk is at least five bytes ("0\r\n\r\n"), so this many rounds always suffices.
    for _ in 0..=body.len() {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").ok_or_else(|| anyhow!("truncated chunk"))?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        if rest.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
    bail!("malformed chunked body")
}

/// Decodes standard base64 (with or without padding; whitespace is skipped).
pub fn base64_decode(text: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            b' ' | b'\r' | b'\n' | b'\t' => continue,
            _ => bail!("not base64: byte {c:#04x}"),
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

impl Browser {
    /// Starts `chromedriver` and opens a headless Chromium session.
    pub async fn start() -> anyhow::Result<Browser> {
        for program in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(program).exists() {
                bail!("{program} is missing: install Debian's chromium and chromium-driver (.ci/browser does)");
            }
        }
        let folder = tempfile::tempdir().context("a temporary folder for the browser")?;
        let port = free_tcp_port()?;
        let log = std::fs::File::create(folder.path().join("chromedriver.log"))?;
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start chromedriver")?;
        let mut browser = Browser { driver, addr: SocketAddr::from(([127, 0, 0, 1], port)), session: None, folder };
        browser.wait_ready().await?;
        let profile = browser.folder.path().join("profile");
        std::fs::create_dir_all(&profile)?;
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1600",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "timeouts": { "script": 60_000, "pageLoad": 60_000, "implicit": 0 },
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        } } });
        let answer = browser.command("POST", "/session", Some(capabilities)).await?;
        let id = answer["sessionId"].as_str().ok_or_else(|| anyhow!("no session id in {answer}"))?;
        browser.session = Some(id.to_string());
        Ok(browser)
    }

    /// Polls the driver's `/status` until it is ready, it exits, or [`READY_TIMEOUT`] passes.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        for _ in 0..200 {
            if let Some(status) = self.driver.try_wait()? {
                bail!("chromedriver exited ({status}) before it was ready:\n{}", self.driver_log());
            }
            if let Ok((200, body)) = self.http("GET", "/status", None).await
                && serde_json::from_slice::<Value>(&body).is_ok_and(|v| v["value"]["ready"] == true)
            {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("chromedriver was not ready after {READY_TIMEOUT:?}:\n{}", self.driver_log())
    }

    /// What `chromedriver` printed so far.
    pub fn driver_log(&self) -> String {
        std::fs::read_to_string(self.folder.path().join("chromedriver.log")).unwrap_or_default()
    }

    /// One HTTP/1.1 exchange with the driver: status and body.
    async fn http(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<(u16, Vec<u8>)> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(self.addr).await?;
            let head = format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                self.addr,
                body.len()
            );
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body.as_bytes()).await?;
            // ChromeDriver answers `Connection: close` but may hold the socket open, so the
            // answer ends where its length says, not at the end of the stream.
            let mut raw = Vec::new();
            let mut buffer = vec![0u8; 64 << 10];
            while !answer_complete(&raw) {
                if raw.len() > ANSWER_MAX {
                    bail!("an answer over {ANSWER_MAX} bytes");
                }
                let n = stream.read(&mut buffer).await?;
                if n == 0 {
                    break;
                }
                raw.extend_from_slice(&buffer[..n]);
            }
            anyhow::Ok(raw)
        };
        let raw = tokio::time::timeout(COMMAND_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("{method} {path}: no answer from chromedriver within {COMMAND_TIMEOUT:?}"))??;
        parse_response(&raw).with_context(|| format!("{method} {path}"))
    }

    /// One WebDriver command: its `value`, or the driver's error as an error.
    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (status, bytes) = self.http(method, path, body.as_ref()).await?;
        let mut answer: Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{method} {path}: not JSON: {}", String::from_utf8_lossy(&bytes)))?;
        if status != 200 {
            let error = answer["value"]["error"].as_str().unwrap_or("unknown error");
            let message = answer["value"]["message"].as_str().unwrap_or("");
            bail!("{method} {path}: {status} {error}: {message}");
        }
        Ok(answer["value"].take())
    }

    /// A command within the session.
    async fn session_command(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let id = self.session.as_deref().ok_or_else(|| anyhow!("no session"))?;
        self.command(method, &format!("/session/{id}{path}"), body).await
    }

    /// Goes to `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.session_command("POST", "/url", Some(json!({ "url": url }))).await.map(drop)
    }

    /// The address of the current page.
    pub async fn url(&self) -> anyhow::Result<String> {
        let value = self.session_command("GET", "/url", None).await?;
        value.as_str().map(str::to_string).ok_or_else(|| anyhow!("no URL in {value}"))
    }

    /// The current page's title.
    pub async fn title(&self) -> anyhow::Result<String> {
        let value = self.session_command("GET", "/title", None).await?;
        Ok(value.as_str().unwrap_or("").to_string())
    }

    /// The first element matching a CSS selector.
    pub async fn find(&self, css: &str) -> anyhow::Result<Element> {
        let body = json!({ "using": "css selector", "value": css });
        let value =
            self.session_command("POST", "/element", Some(body)).await.with_context(|| format!("find {css}"))?;
        let id = value[ELEMENT_KEY].as_str().ok_or_else(|| anyhow!("find {css}: no element in {value}"))?;
        Ok(Element(id.to_string()))
    }

    /// Every element matching a CSS selector (none is not an error).
    pub async fn find_all(&self, css: &str) -> anyhow::Result<Vec<Element>> {
        let body = json!({ "using": "css selector", "value": css });
        let value = self.session_command("POST", "/elements", Some(body)).await?;
        let found = value.as_array().ok_or_else(|| anyhow!("find all {css}: not a list: {value}"))?;
        Ok(found.iter().filter_map(|e| e[ELEMENT_KEY].as_str()).map(|id| Element(id.to_string())).collect())
    }

    /// Types `text` into an element, as a person would.
    pub async fn send_keys(&self, element: &Element, text: &str) -> anyhow::Result<()> {
        let path = format!("/element/{}/value", element.0);
        self.session_command("POST", &path, Some(json!({ "text": text }))).await.map(drop)
    }

    /// Chooses a file for an `<input type=file>`: ChromeDriver takes its absolute path as the
    /// typed text.
    pub async fn choose_file(&self, element: &Element, file: &Path) -> anyhow::Result<()> {
        let path = file.canonicalize().with_context(|| format!("the file to upload, {}", file.display()))?;
        let text = path.to_str().ok_or_else(|| anyhow!("not a UTF-8 path: {}", path.display()))?;
        self.send_keys(element, text).await
    }

    /// Empties an input.
    pub async fn clear(&self, element: &Element) -> anyhow::Result<()> {
        self.session_command("POST", &format!("/element/{}/clear", element.0), Some(json!({}))).await.map(drop)
    }

    /// Clicks an element.
    pub async fn click(&self, element: &Element) -> anyhow::Result<()> {
        self.session_command("POST", &format!("/element/{}/click", element.0), Some(json!({}))).await.map(drop)
    }

    /// An element's rendered text.
    pub async fn text(&self, element: &Element) -> anyhow::Result<String> {
        let value = self.session_command("GET", &format!("/element/{}/text", element.0), None).await?;
        Ok(value.as_str().unwrap_or("").to_string())
    }

    /// An element's attribute as written in the page (`None` if it has none).
    pub async fn attribute(&self, element: &Element, name: &str) -> anyhow::Result<Option<String>> {
        let value = self.session_command("GET", &format!("/element/{}/attribute/{name}", element.0), None).await?;
        Ok(value.as_str().map(str::to_string))
    }

    /// The current page's HTML as the browser holds it.
    pub async fn source(&self) -> anyhow::Result<String> {
        let value = self.session_command("GET", "/source", None).await?;
        Ok(value.as_str().unwrap_or("").to_string())
    }

    /// Runs `script` as the body of a function called with `args`; its return value.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        self.session_command("POST", "/execute/sync", Some(json!({ "script": script, "args": args }))).await
    }

    /// Runs `script` with `args` and a callback as its last argument; what it passes the callback
    /// (within the session's script timeout).
    pub async fn execute_async(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        self.session_command("POST", "/execute/async", Some(json!({ "script": script, "args": args }))).await
    }

    /// Sets the window's outer size in pixels.
    pub async fn set_window_size(&self, width: u32, height: u32) -> anyhow::Result<()> {
        let body = json!({ "width": width, "height": height });
        self.session_command("POST", "/window/rect", Some(body)).await.map(drop)
    }

    /// The window's outer size in pixels.
    pub async fn window_size(&self) -> anyhow::Result<(u32, u32)> {
        let rect = self.session_command("GET", "/window/rect", None).await?;
        let dimension = |name: &str| rect[name].as_u64().and_then(|v| u32::try_from(v).ok());
        dimension("width").zip(dimension("height")).ok_or_else(|| anyhow!("no window size in {rect}"))
    }

    /// Saves a PNG screenshot of the whole page to `path`: the window is made as tall as the page
    /// (at most `max_height` pixels) for the shot, then put back.
    pub async fn full_page_screenshot(&self, path: &Path, max_height: u32) -> anyhow::Result<PathBuf> {
        let (width, height) = self.window_size().await?;
        let sizes = self.execute("return [document.documentElement.scrollHeight, window.innerHeight];", vec![]).await?;
        let (page, inner) = (sizes[0].as_u64().unwrap_or(0), sizes[1].as_u64().unwrap_or(0));
        let wanted =
            u32::try_from(page + u64::from(height).saturating_sub(inner)).unwrap_or(max_height).min(max_height);
        if wanted <= height {
            return self.screenshot(path).await;
        }
        self.set_window_size(width, wanted).await?;
        let shot = self.screenshot(path).await;
        self.set_window_size(width, height).await?;
        shot
    }

    /// Saves a PNG screenshot of the viewport to `path` (creating its folder).
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<PathBuf> {
        let value = self.session_command("GET", "/screenshot", None).await?;
        let png = base64_decode(value.as_str().ok_or_else(|| anyhow!("no screenshot"))?)?;
        if !png.starts_with(b"\x89PNG") {
            bail!("the screenshot is not a PNG");
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))?;
        Ok(path.to_path_buf())
    }

    /// Ends the session (Chromium exits) and stops the driver.
    pub async fn quit(mut self) -> anyhow::Result<()> {
        let result = self.session_command("DELETE", "", None).await.map(drop);
        self.session = None;
        result
    }

    /// Ends the session without async I/O (for drop): a blocking request with timeouts.
    fn quit_blocking(&mut self) {
        let Some(id) = self.session.take() else { return };
        let Ok(mut stream) = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)) else { return };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
        let head = format!(
            "DELETE /session/{id} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.addr
        );
        if stream.write_all(head.as_bytes()).is_ok() {
            let (mut raw, mut buffer) = (Vec::new(), [0u8; 4096]);
            while !answer_complete(&raw) && raw.len() < 1 << 20 {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => raw.extend_from_slice(&buffer[..n]),
                }
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.quit_blocking();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("AAEC/w==").unwrap(), [0, 1, 2, 255]);
        assert!(base64_decode("a*b").is_err());
    }

    #[test]
    fn chunked_answers_are_joined() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(raw).unwrap(), (200, b"{\"a\":1}".to_vec()));
        assert!(answer_complete(raw) && !answer_complete(&raw[..raw.len() - 3]));
        let plain = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}";
        assert!(answer_complete(plain) && !answer_complete(&plain[..plain.len() - 1]));
        assert_eq!(parse_response(plain).unwrap(), (404, b"{}".to_vec()));
    }
}

//! A recording TCP relay between a client under test and moto: it forwards
//! bytes unchanged and notes each HTTP request, so a test can show which
//! calls (and so which writes) a backend made. It never answers for moto.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Copies one connection both ways, noting each request: its request line,
/// or for JSON services the operation in `X-Amz-Target`.
pub async fn relay(client: TcpStream, server: TcpStream, calls: Arc<Mutex<Vec<String>>>) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let answers =
        tokio::spawn(async move { tokio::io::copy(&mut from_server, &mut to_client).await });
    let (mut seen, mut body_left, mut chunk) = (Vec::new(), 0usize, vec![0u8; 64 * 1024]);
    loop {
        let n = match from_client.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to_server.write_all(&chunk[..n]).await.is_err() {
            break;
        }
        seen.extend_from_slice(&chunk[..n]);
        // Kept-alive connections carry one request after another: each body
        // is skipped by its Content-Length to find the next head.
        loop {
            let skip = body_left.min(seen.len());
            seen.drain(..skip);
            body_left -= skip;
            if body_left > 0 {
                break;
            }
            let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                break;
            };
            let head = String::from_utf8_lossy(&seen[..end]).into_owned();
            seen.drain(..end + 4);
            let mut lines = head.lines();
            let request_line = lines.next().unwrap_or_default();
            let mut call = request_line
                .rsplit_once(' ')
                .map_or(request_line, |(r, _)| r)
                .to_string();
            for line in lines {
                let Some((name, value)) = line.split_once(':') else {
                    continue;
                };
                let value = value.trim();
                match name.trim().to_ascii_lowercase().as_str() {
                    "x-amz-target" => call = value.rsplit('.').next().unwrap_or(value).to_string(),
                    "content-length" => body_left = value.parse().unwrap_or(0),
                    _ => {}
                }
            }
            calls.lock().unwrap().push(call);
        }
    }
    let _ = to_server.shutdown().await;
    let _ = answers.await;
}

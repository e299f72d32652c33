//! A user-space TCP proxy between one device and the relay: the lossy link.
//! Clean, it forwards bytes as they come; lossy, it holds every chunk for a
//! delay and drops the whole connection with a chance per chunk (TCP cannot
//! lose bytes inside a stream, so loss shows as resets and retransmission
//! delay, which is what a bad mobile link does to a TCP connection). Its
//! target follows the relay across restarts. The drop draws come from a
//! seeded generator.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the link behaves now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkMode {
    /// Delay of each chunk.
    pub delay_ms: u64,
    /// Chance, in percent, that a chunk drops the connection.
    pub drop_pct: u32,
}

struct State {
    target: SocketAddr,
    mode: LinkMode,
    rng: ChaCha8Rng,
    /// Bumped whenever the target moves, so connections to the old one end.
    generation: u64,
}

/// A running proxy.
#[derive(Clone)]
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr, seed: u64) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            target,
            mode: LinkMode::default(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            generation: 0,
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let (target, generation) = {
                        let s = state.lock().expect("proxy state");
                        (s.target, s.generation)
                    };
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        splice(inbound, outbound, state, generation).await;
                    }
                });
            }
        });
        Ok(Self { addr, state })
    }

    /// Where devices dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Points the proxy at a new target (the relay restarted).
    pub fn retarget(&self, target: SocketAddr) {
        let mut s = self.state.lock().expect("proxy state");
        s.target = target;
        s.generation += 1;
    }

    /// Sets the link's behaviour.
    pub fn set_mode(&self, mode: LinkMode) {
        self.state.lock().expect("proxy state").mode = mode;
    }
}

/// Pumps both directions until either side closes or a drop is drawn.
async fn splice(a: TcpStream, b: TcpStream, state: Arc<Mutex<State>>, generation: u64) {
    let (ar, aw) = a.into_split();
    let (br, bw) = b.into_split();
    let up = tokio::spawn(pump(ar, bw, state.clone(), generation));
    let down = tokio::spawn(pump(br, aw, state, generation));
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<Mutex<State>>,
    generation: u64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let (mode, drop, current) = {
            let mut s = state.lock().expect("proxy state");
            let mode = s.mode;
            let drop = mode.drop_pct > 0 && s.rng.random_range(0..100) < mode.drop_pct;
            (mode, drop, s.generation == generation)
        };
        if drop || !current {
            return;
        }
        if mode.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(mode.delay_ms)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

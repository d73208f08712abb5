//! A store that is farther away: a TCP or unix socket proxy that holds every
//! segment it forwards for a fixed delay before passing it on, in both
//! directions, without limiting throughput (reading goes on while earlier
//! segments wait). With `--delay-ms 5` every round trip through it takes
//! 10 ms longer. Made for benchmarks on hosts where `tc netem` is not
//! available, or where it would slow every other user of the loopback
//! interface too.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

#[derive(Parser)]
#[command(about)]
struct Args {
    /// Where to listen: `unix:/abs/path.sock` or `tcp:host:port`.
    #[arg(long)]
    listen: Endpoint,
    /// Where to forward every connection to: `unix:/abs/path.sock` or `tcp:host:port`.
    #[arg(long)]
    connect: Endpoint,
    /// Milliseconds every segment is held, in each direction.
    #[arg(long, default_value_t = 5)]
    delay_ms: u64,
}

/// A socket address of either kind.
#[derive(Clone, Debug)]
enum Endpoint {
    Unix(String),
    Tcp(String),
}

impl std::str::FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            Ok(Self::Unix(p.to_owned()))
        } else if let Some(a) = s.strip_prefix("tcp:") {
            Ok(Self::Tcp(a.to_owned()))
        } else {
            Err(format!("expected unix:PATH or tcp:HOST:PORT, not {s:?}"))
        }
    }
}

/// One connected stream of either kind, split into halves that can be
/// moved to their own threads.
enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    fn connect(to: &Endpoint) -> std::io::Result<Self> {
        Ok(match to {
            Endpoint::Unix(p) => Self::Unix(UnixStream::connect(p)?),
            Endpoint::Tcp(a) => {
                let s = TcpStream::connect(a)?;
                s.set_nodelay(true)?;
                Self::Tcp(s)
            }
        })
    }

    fn try_clone(&self) -> std::io::Result<Self> {
        Ok(match self {
            Self::Unix(s) => Self::Unix(s.try_clone()?),
            Self::Tcp(s) => Self::Tcp(s.try_clone()?),
        })
    }

    fn shutdown_write(&self) {
        let _ = match self {
            Self::Unix(s) => s.shutdown(Shutdown::Write),
            Self::Tcp(s) => s.shutdown(Shutdown::Write),
        };
    }

    fn shutdown_both(&self) {
        let _ = match self {
            Self::Unix(s) => s.shutdown(Shutdown::Both),
            Self::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Unix(s) => s.read(buf),
            Self::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Unix(s) => s.write(buf),
            Self::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Forwards `from` to `to`: a reader thread stamps every segment with the
/// time it may leave and queues it (unbounded: the delay adds latency, not
/// a window), this thread sends each one once its time has come. At end of
/// stream the write side of `to` is shut down after the last segment; on an
/// error both connections are closed.
fn pump(mut from: Conn, mut to: Conn, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let closer = match from.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    };
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    let mut ok = true;
    for (due, data) in rx {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if to.write_all(&data).is_err() {
            ok = false;
            break;
        }
    }
    if ok {
        to.shutdown_write();
    } else {
        to.shutdown_both();
        closer.shutdown_both();
    }
    let _ = reader.join();
}

/// Serves one accepted connection: connects upstream and pumps both ways.
fn serve(client: Conn, upstream: &Endpoint, delay: Duration) -> Result<()> {
    let server = Conn::connect(upstream).with_context(|| format!("connecting to {upstream:?}"))?;
    let (c2, s2) = (client.try_clone()?, server.try_clone()?);
    let up = std::thread::spawn(move || pump(client, server, delay));
    pump(s2, c2, delay);
    let _ = up.join();
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let delay = Duration::from_millis(args.delay_ms);
    let mut accept: Box<dyn FnMut() -> std::io::Result<Conn>> = match &args.listen {
        Endpoint::Unix(p) => {
            let _ = std::fs::remove_file(p);
            let l = UnixListener::bind(p).with_context(|| format!("binding {p}"))?;
            Box::new(move || l.accept().map(|(s, _)| Conn::Unix(s)))
        }
        Endpoint::Tcp(a) => {
            let l = TcpListener::bind(a).with_context(|| format!("binding {a}"))?;
            Box::new(move || {
                let (s, _) = l.accept()?;
                s.set_nodelay(true)?;
                Ok(Conn::Tcp(s))
            })
        }
    };
    println!(
        "LISTENING {:?} -> {:?}, {} ms each way",
        args.listen, args.connect, args.delay_ms
    );
    loop {
        let client = match accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => bail!("accept: {e}"),
        };
        let upstream = args.connect.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve(client, &upstream, delay) {
                eprintln!("delay-proxy: {e:#}");
            }
        });
    }
}

//! Delay for packets the kernel queues to user space (NFQUEUE): a thread in
//! a node's namespace takes each packet and lets it go after a random delay,
//! so packets also overtake one another. (The kernel's own delay, netem, is
//! not on every machine; NFQUEUE is.)

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nfq::{Queue, Verdict};

/// A running delay; [`Delayer::stop`] lets every held packet go.
pub(crate) struct Delayer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<u64>,
}

/// A small seeded generator for the delays (xorshift64*).
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

impl Delayer {
    /// Holds each packet queued to `queue` in namespace `ns` for `delay` ±
    /// `jitter`, drawn from `seed`.
    pub(crate) fn start(
        ns: &str,
        queue: u16,
        delay: Duration,
        jitter: Duration,
        seed: u64,
    ) -> Delayer {
        let stop = Arc::new(AtomicBool::new(false));
        let ns_file = File::open(format!("/run/netns/{ns}")).expect("the node's namespace");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("the delay thread enters the node's namespace");
            let mut q = Queue::open().expect("an NFQUEUE socket");
            q.bind(queue).expect("the queue binds");
            // A full queue lets packets through rather than dropping them.
            q.set_fail_open(queue, true).expect("fail-open");
            q.set_queue_max_len(queue, 65_536).expect("queue length");
            q.set_nonblocking(true);
            let _ = ready_tx.send(());
            let mut rng = Jitter(seed | 1);
            let mut due: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
            let mut held = HashMap::new();
            let mut seq = 0u64;
            let mut passed = 0u64;
            let span = u64::try_from(jitter.as_micros()).unwrap_or(0) * 2 + 1;
            while !stopping.load(Ordering::Acquire) {
                loop {
                    match q.recv() {
                        Ok(msg) => {
                            let spread = Duration::from_micros(rng.next() % span);
                            let wait = (delay + spread).saturating_sub(jitter);
                            seq += 1;
                            due.push(Reverse((Instant::now() + wait, seq)));
                            held.insert(seq, msg);
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => panic!("NFQUEUE: {e}"),
                    }
                }
                let now = Instant::now();
                while let Some(&Reverse((at, id))) = due.peek() {
                    if at > now {
                        break;
                    }
                    due.pop();
                    if let Some(mut msg) = held.remove(&id) {
                        msg.set_verdict(Verdict::Accept);
                        q.verdict(msg).expect("a verdict");
                        passed += 1;
                    }
                }
                // Paces the loop: the next packet is due at the earliest
                // then, and new ones are looked for every half millisecond.
                let next = due
                    .peek()
                    .map_or(Duration::from_micros(500), |Reverse((at, _))| {
                        at.saturating_duration_since(now)
                    });
                std::thread::park_timeout(next.min(Duration::from_micros(500)));
            }
            for (_, mut msg) in held.drain() {
                msg.set_verdict(Verdict::Accept);
                let _ = q.verdict(msg);
            }
            let _ = q.unbind(queue);
            passed
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the delay thread starts");
        Delayer { stop, thread }
    }

    /// Lets every held packet go and stops; returns how many packets it delayed.
    pub(crate) fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Release);
        self.thread.thread().unpark();
        self.thread.join().expect("the delay thread ends")
    }
}

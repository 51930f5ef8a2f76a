//! The disk store's candidates on sessmesh's workload: `KEYS` sessions
//! (64-byte keys, 352-byte states: a packed session with one 256-byte
//! value), each written `ROUNDS` times, made durable every second (Redis's
//! `appendfsync everysec`); then the store is opened again and every
//! session loaded into memory, as a node restarting would. For each: the
//! write rate, the CPU time per write, the load time and the disk bytes per
//! session. See docs/architecture.md#durability.

use std::collections::HashMap;

use redb::{ReadableDatabase, ReadableTable};
use std::path::Path;
use std::time::{Duration, Instant};

const VALUE: usize = 352;

fn main() {
    let keys: usize = env("KEYS", 1_000_000);
    let rounds: usize = env("ROUNDS", 2);
    let dir = std::env::args().nth(1).expect("usage: disk-candidates DIR");
    let dir = Path::new(&dir);
    println!(
        "{keys} sessions of 64-byte keys and {VALUE}-byte states, each written {rounds} times, durable every second"
    );
    println!();
    println!(
        "| candidate | writes/s | CPU µs per write | load s | sessions loaded | disk bytes per session |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    type Candidate = fn(&Path, usize, usize) -> (Duration, Duration, u64);
    let candidates: [(&str, Candidate); 3] = [
        ("sessmesh-disk log", own_log),
        ("fjall 3.1", fjall),
        ("redb 4.6", redb),
    ];
    for (name, run) in candidates {
        let path = dir.join(name.split(' ').next().unwrap_or(name));
        std::fs::create_dir_all(&path).unwrap();
        let (wall, cpu, disk) = run(&path, keys, rounds);
        let writes = (keys * rounds) as f64;
        let loading = Instant::now();
        let loaded = match name {
            n if n.starts_with("sessmesh") => load_own_log(&path),
            n if n.starts_with("fjall") => load_fjall(&path),
            _ => load_redb(&path),
        };
        let load = loading.elapsed();
        assert_eq!(loaded, keys, "{name} lost sessions");
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {loaded} | {:.0} |",
            writes / wall.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / writes,
            load.as_secs_f64(),
            disk as f64 / keys as f64,
        );
        std::fs::remove_dir_all(&path).unwrap();
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn key(i: usize) -> Vec<u8> {
    format!("session:{i:056}").into_bytes()
}

fn value(i: usize, round: usize) -> Vec<u8> {
    let mut v = vec![(i % 251) as u8; VALUE];
    v[..8].copy_from_slice(&(round as u64).to_le_bytes());
    v
}

/// This process's CPU time so far (user and system), from /proc.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn disk_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                disk_bytes(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

/// Runs `write(i, round)` for every write, and `sync()` each second.
fn drive(
    keys: usize,
    rounds: usize,
    mut write: impl FnMut(&[u8], &[u8]),
    mut sync: impl FnMut(),
) -> (Duration, Duration) {
    let (start, cpu_start) = (Instant::now(), cpu());
    let mut last_sync = Instant::now();
    for round in 0..rounds {
        for i in 0..keys {
            write(&key(i), &value(i, round));
            if i % 1024 == 0 && last_sync.elapsed() >= Duration::from_secs(1) {
                sync();
                last_sync = Instant::now();
            }
        }
    }
    sync();
    (start.elapsed(), cpu() - cpu_start)
}

fn own_log(path: &Path, keys: usize, rounds: usize) -> (Duration, Duration, u64) {
    let file = path.join("log");
    let mut log = sessmesh_disk::log::Log::open(&file, 0).unwrap();
    let mut record = Vec::new();
    let log = std::cell::RefCell::new(&mut log);
    let (wall, cpu) = drive(
        keys,
        rounds,
        |k, v| {
            record.clear();
            record.push(k.len() as u8);
            record.extend_from_slice(k);
            record.extend_from_slice(v);
            log.borrow_mut().append(&record).unwrap();
        },
        || log.borrow_mut().sync().unwrap(),
    );
    (wall, cpu, disk_bytes(path))
}

fn load_own_log(path: &Path) -> usize {
    let contents = sessmesh_disk::log::read(&path.join("log")).unwrap();
    let mut map: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for record in contents.records {
        let len = record[0] as usize;
        map.insert(record[1..=len].to_vec(), record[1 + len..].to_vec());
    }
    map.len()
}

fn fjall(path: &Path, keys: usize, rounds: usize) -> (Duration, Duration, u64) {
    let db = fjall::Database::builder(path).open().unwrap();
    let sessions = db
        .keyspace("sessions", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    let (wall, cpu) = drive(
        keys,
        rounds,
        |k, v| sessions.insert(k, v).unwrap(),
        || db.persist(fjall::PersistMode::SyncData).unwrap(),
    );
    drop(sessions);
    drop(db);
    (wall, cpu, disk_bytes(path))
}

fn load_fjall(path: &Path) -> usize {
    let db = fjall::Database::builder(path).open().unwrap();
    let sessions = db
        .keyspace("sessions", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    let mut map: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for guard in sessions.iter() {
        let (k, v) = guard.into_inner().unwrap();
        map.insert(k.to_vec(), v.to_vec());
    }
    map.len()
}

const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("sessions");

fn redb(path: &Path, keys: usize, rounds: usize) -> (Duration, Duration, u64) {
    let db = redb::Database::create(path.join("db")).unwrap();
    let txn = std::cell::RefCell::new(Some(db.begin_write().unwrap()));
    let (wall, cpu) = drive(
        keys,
        rounds,
        |k, v| {
            let txn = txn.borrow();
            let mut table = txn.as_ref().unwrap().open_table(TABLE).unwrap();
            table.insert(k, v).unwrap();
        },
        || {
            let done = txn.borrow_mut().take().unwrap();
            done.commit().unwrap();
            *txn.borrow_mut() = Some(db.begin_write().unwrap());
        },
    );
    if let Some(t) = txn.borrow_mut().take() {
        t.commit().unwrap();
    }
    drop(db);
    (wall, cpu, disk_bytes(path))
}

fn load_redb(path: &Path) -> usize {
    let db = redb::Database::open(path.join("db")).unwrap();
    let read = db.begin_read().unwrap();
    let table = read.open_table(TABLE).unwrap();
    let mut map: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for item in table.iter().unwrap() {
        let (k, v) = item.unwrap();
        map.insert(k.value().to_vec(), v.value().to_vec());
    }
    map.len()
}

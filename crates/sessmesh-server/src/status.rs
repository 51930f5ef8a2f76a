//! `sessmesh status`: a node's view of the cluster, from its HTTP endpoint.

use serde_json::Value;

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Fetches `/status` from the node at `addr` and prints it.
pub(crate) fn show(addr: &str, json: bool) -> Result {
    let url = format!("http://{addr}/status");
    let body = ureq::get(&url)
        .call()
        .map_err(|e| format!("cannot reach {url}: {e}"))?
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{url}: {e}"))?;
    if json {
        println!("{body}");
        return Ok(());
    }
    let status: Value =
        serde_json::from_str(&body).map_err(|e| format!("{url}: not a status: {e}"))?;
    println!(
        "node {} ({}), {}; {} of {} partitions, {} sessions stored",
        text(&status["name"]),
        text(&status["peer_addr"]),
        text(&status["state"]),
        text(&status["partitions_owned"]),
        text(&status["partition_count"]),
        text(&status["sessions_stored"]),
    );
    println!(
        "hints pending {} (dropped {}); last anti-entropy round {} s ago; {} rounds, {} keys repaired",
        text(&status["hints_pending"]),
        text(&status["hints_dropped"]),
        text(&status["last_anti_entropy_seconds_ago"]),
        text(&status["replication"]["anti_entropy_rounds"]),
        text(&status["replication"]["keys_repaired"]),
    );
    let max = match &status["memory"]["max"] {
        Value::Number(n) if n.as_u64() == Some(0) => "none".to_owned(),
        other => text(other),
    };
    println!(
        "memory used {} bytes of maxmemory {} ({}): sessions {}, tables {}, hints {}, consensus {}, \
         evictions {}, other {}; {} sessions evicted",
        text(&status["memory"]["used"]),
        max,
        text(&status["memory"]["policy"]),
        text(&status["memory"]["sessions"]),
        text(&status["memory"]["tables"]),
        text(&status["memory"]["hints"]),
        text(&status["memory"]["consensus"]),
        text(&status["memory"]["evictions"]),
        text(&status["memory"]["other"]),
        text(&status["memory"]["evicted_keys"]),
    );
    println!();
    let rows: Vec<[String; 4]> = status["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .map(|m| {
                    [
                        text(&m["name"]),
                        text(&m["state"]),
                        text(&m["partitions"]),
                        text(&m["peer_addr"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let header = ["MEMBER", "STATE", "PARTITIONS", "PEER ADDRESS"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(())
}

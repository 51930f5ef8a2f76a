//! `sessmesh certs`: the cluster CA and node certificates, as PEM files.

use std::net::IpAddr;
use std::path::Path;

use sessmesh_net::ClusterCa;

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

/// Generates the cluster CA into `dir`/ca.pem and `dir`/ca.key.
pub(crate) fn init(dir: &Path, cluster: &str, force: bool) -> Result {
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
    if !force && (cert.exists() || key.exists()) {
        return Err(format!(
            "{} already holds a CA; pass --force to replace it (every node certificate must then be reissued)",
            dir.display()
        )
        .into());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let ca = ClusterCa::generate(cluster)?;
    ca.save(&cert, &key)?;
    println!(
        "wrote {} (give it to every node) and {} (keep it where certificates are issued)",
        cert.display(),
        key.display()
    );
    Ok(())
}

/// Issues a certificate for node `name` at `ips`, signed by the CA in `dir`.
pub(crate) fn issue(dir: &Path, name: &str, ips: &[IpAddr]) -> Result {
    let ca = ClusterCa::load(&dir.join("ca.pem"), &dir.join("ca.key"))?;
    let identity = ca.issue(name, ips)?;
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    identity.save(&cert, &key)?;
    println!("wrote {} and {}", cert.display(), key.display());
    Ok(())
}

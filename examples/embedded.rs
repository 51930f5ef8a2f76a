//! The smallest embedding: two peers of one application (here in one
//! process, in development mode) share sessions.
//!
//! ```text
//! cargo run --example embedded
//! ```
//!
//! A real deployment starts one peer per application process, with
//! `.listen(..)`, `.seeds(..)` and `.tls_files(ca, cert, key)` from its
//! configuration instead of `.development()`.

use std::time::Duration;

use sessmesh::{Expiry, Node};

#[tokio::main]
async fn main() -> Result<(), sessmesh::Error> {
    let first = Node::builder()
        .name("app-1")
        .listen("127.0.0.1:0".parse().expect("an address"))
        .development()
        .start()
        .await?;
    let second = Node::builder()
        .name("app-2")
        .listen("127.0.0.1:0".parse().expect("an address"))
        .seeds([first.me().addr])
        .development()
        .start()
        .await?;

    // Log in on one peer: the session lives 30 minutes past its last use.
    let idle = Expiry::idle_for(Duration::from_secs(30 * 60));
    first.put("session:42", [("user", "ada")], idle).await?;

    // Any peer serves it; another request updates one field on the other.
    second.put_field("session:42", "cart", "3 books").await?;
    let session = first.get("session:42").await?.expect("logged in");
    println!("session:42 = {session:?}");

    // Log out on either: gone everywhere, for good.
    second.delete("session:42").await?;
    assert!(first.get("session:42").await?.is_none());
    println!("session:42 logged out");

    second.shutdown().await?;
    first.shutdown().await
}

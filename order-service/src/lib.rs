//! The cake-shop order system. It will hold the HTTP order API and its notification consumers, built on the `client` library (issue: order service).

//! HTTP semantics shared by every transport: the one route table (`route`), HTTP/1.1 heads
//! and the responses ringcast writes (`h1`), and the demo page. Pure functions over bytes;
//! must not touch connections, shards or IO.

pub mod h1;
pub mod negotiate;
pub mod route;

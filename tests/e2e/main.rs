//! End-to-end tests: each starts real `continuum node` processes on 127.0.0.1 (with
//! `--no-mdns`) and drives them through the CLI and real HTTP/1.1 and HTTP/3 sockets.
//! One test binary, a module per topic (as Wasmtime's tests/all does).
//!
//! Needs the example components: `scripts/build-guests.sh` (scripts/test.sh runs it).

mod arches;
mod bad_gossip;
mod bad_http;
mod bad_input;
mod bad_names;
mod calls;
mod closed_swarm;
mod direct;
mod durability;
mod engines;
mod forged_epoch;
mod lane;
mod mdns;
mod mesh;
mod migrate;
mod names;
mod newcomers;
mod open_swarm;
mod placement;
mod realtime;
mod rpc;
mod single_node;
mod stranger;
mod support;
mod ticks;

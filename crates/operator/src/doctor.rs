//! `gatehouse doctor`: the seed's traps that apply to a cluster.

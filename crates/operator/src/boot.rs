//! `gatehouse operator proxy`: the entry point of a proxy pod. It keeps the
//! node's state directory in the proxy's Secret (the pod's filesystem is
//! read-only and its state directory an `emptyDir`), hands the node the auth
//! key of the pod's ordinal, and runs `gatehouse node up` as a child.

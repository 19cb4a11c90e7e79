// Package replicate owns a replicated volume: the local store, the on-disk
// metadata (generations, bitmap, write intent), the link to the peer,
// resync and verify. It knows nothing of membership, fencing or service
// addresses: the cluster layer drives it through roles and hooks.
package replicate

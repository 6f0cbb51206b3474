//go:build tools

// Package tools pins the livekit-server command in go.mod and go.sum; it is never compiled (build.sh
// builds github.com/livekit/livekit-server/cmd/server directly).
package tools

import _ "github.com/livekit/livekit-server/cmd/server"

// Package configs embeds config.yaml, the service's documented defaults, so
// the binary runs with no file beside it.
package configs

import _ "embed"

// Default is config.yaml: every key, its default and a one-line comment.
//
//go:embed config.yaml
var Default []byte

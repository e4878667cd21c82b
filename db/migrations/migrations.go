// Package migrations embeds the service's goose migrations and applies them
// through a goose Provider (no global goose state).
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"

	"github.com/pressly/goose/v3"
)

//go:embed *.sql
var files embed.FS

// FS returns the embedded migration files.
func FS() fs.FS { return files }

// Provider returns a goose provider over the embedded migrations.
func Provider(db *sql.DB) (*goose.Provider, error) {
	p, err := goose.NewProvider(goose.DialectPostgres, db, files)
	if err != nil {
		return nil, fmt.Errorf("goose provider: %w", err)
	}
	return p, nil
}

// Up applies every pending migration and returns how many it applied. When
// one fails, the error names its file ("migration 00003_lifecycle.sql failed: ...")
// and wraps the driver's error.
func Up(ctx context.Context, db *sql.DB) (int, error) {
	p, err := Provider(db)
	if err != nil {
		return 0, err
	}
	res, err := p.Up(ctx)
	if pe, ok := errors.AsType[*goose.PartialError](err); ok {
		return len(pe.Applied), fmt.Errorf("migration %s failed: %w", path.Base(pe.Failed.Source.Path), pe.Err)
	}
	if err != nil {
		return len(res), fmt.Errorf("migrate up: %w", err)
	}
	return len(res), nil
}

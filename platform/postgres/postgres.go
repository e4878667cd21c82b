// Package postgres opens the service's PostgreSQL pool and classifies driver
// errors, so that feature repositories translate them in one line and no
// *pq.Error leaves a repository.
package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/jmoiron/sqlx"
	"github.com/lib/pq"

	"github.com/campaignd/dispatch/platform/errs"
)

// Options tune the connection pool.
type Options struct {
	MaxOpenConns    int
	MaxIdleConns    int
	ConnMaxLifetime time.Duration
	// CreateDatabase creates the database named in the URL when it does not
	// exist and the role is allowed to.
	CreateDatabase bool
	// PgBouncer makes the pool safe behind PgBouncer in transaction pooling
	// mode: no statement prepared on the server, every query in one round
	// trip (see pgbouncer.go).
	PgBouncer bool
}

// Open connects to dsn, creating the database first if asked to, and pings it.
// A server that cannot be reached yields the driver's error as it is, with no
// dsn in it (a dsn may hold a password): the caller says which server, with
// Addr, and can test the error with IsUnavailable to decide to wait.
func Open(ctx context.Context, dsn string, o Options) (*sqlx.DB, error) {
	if o.CreateDatabase {
		if err := ensureDatabase(ctx, dsn); err != nil {
			return nil, err
		}
	}
	var db *sqlx.DB
	if o.PgBouncer {
		sdb, err := openPgBouncer(dsn)
		if err != nil {
			return nil, fmt.Errorf("open postgres: %w", err)
		}
		db = sqlx.NewDb(sdb, "postgres")
	} else {
		var err error
		if db, err = sqlx.Open("postgres", dsn); err != nil {
			return nil, fmt.Errorf("open postgres: %w", err)
		}
	}
	if o.MaxOpenConns > 0 {
		db.SetMaxOpenConns(o.MaxOpenConns)
	}
	if o.MaxIdleConns > 0 {
		db.SetMaxIdleConns(o.MaxIdleConns)
	}
	if o.ConnMaxLifetime > 0 {
		db.SetConnMaxLifetime(o.ConnMaxLifetime)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := db.PingContext(pingCtx); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// ensureDatabase connects to the server's maintenance database and creates
// the target database when it is missing.
func ensureDatabase(ctx context.Context, dsn string) error {
	u, err := url.Parse(dsn)
	if err != nil || u.Scheme == "" {
		return nil // key=value DSNs are used as given
	}
	name := strings.TrimPrefix(u.Path, "/")
	if name == "" || name == "postgres" {
		return nil
	}
	admin := *u
	admin.Path = "/postgres"
	q := admin.Query()
	q.Del("search_path")
	admin.RawQuery = q.Encode()
	db, err := sql.Open("postgres", admin.String())
	if err != nil {
		return fmt.Errorf("open postgres maintenance db: %w", err)
	}
	defer db.Close()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var exists bool
	if err := db.QueryRowContext(cctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		if IsUnavailable(err) {
			// The server is not up (yet): say so, so the caller may wait
			// and come back, instead of failing later on a database that
			// does not exist because this step was skipped.
			return err
		}
		// The role may not reach the maintenance database; the real
		// connection will report the actual problem.
		return nil
	}
	if exists {
		return nil
	}
	if _, err := db.ExecContext(cctx, `CREATE DATABASE `+pq.QuoteIdentifier(name)); err != nil {
		if IsUniqueViolation(err) || isDuplicateDatabase(err) {
			return nil // another replica created it first
		}
		return fmt.Errorf("create database %q: %w", name, err)
	}
	return nil
}

func isDuplicateDatabase(err error) bool {
	var pe *pq.Error
	return errors.As(err, &pe) && pe.Code == "42P04"
}

// Addr returns the host:port dsn connects to, for logs and errors: no user,
// password or database name. A key=value dsn is read for host and port.
func Addr(dsn string) string {
	host, port := "localhost", "5432"
	if u, err := url.Parse(dsn); err == nil && u.Scheme != "" {
		if h := u.Hostname(); h != "" {
			host = h
		}
		if p := u.Port(); p != "" {
			port = p
		}
		return net.JoinHostPort(host, port)
	}
	for _, kv := range strings.Fields(dsn) {
		k, v, _ := strings.Cut(kv, "=")
		v = strings.Trim(v, "'")
		switch {
		case k == "host" && v != "":
			host = v
		case k == "port" && v != "":
			port = v
		}
	}
	return net.JoinHostPort(host, port)
}

// Redact returns dsn with its password replaced, for logs.
func Redact(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil || u.User == nil {
		return dsn
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

// IsUniqueViolation reports whether err is a unique-constraint violation.
func IsUniqueViolation(err error) bool {
	var pe *pq.Error
	return errors.As(err, &pe) && pe.Code == "23505"
}

// IsForeignKeyViolation reports whether err is a foreign-key violation.
func IsForeignKeyViolation(err error) bool {
	var pe *pq.Error
	return errors.As(err, &pe) && pe.Code == "23503"
}

// ConstraintName returns the violated constraint's name, if err carries one.
func ConstraintName(err error) string {
	var pe *pq.Error
	if errors.As(err, &pe) {
		return pe.Constraint
	}
	return ""
}

// IsUnavailable reports whether err means the database cannot be reached or
// is not accepting work right now (connection refused or reset, shutting
// down, too many connections), as opposed to a problem with the query.
func IsUnavailable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, sql.ErrConnDone) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return true
	}
	var pe *pq.Error
	if errors.As(err, &pe) {
		switch pe.Code.Class() {
		case "08", "53", "57": // connection exception, insufficient resources, operator intervention
			return true
		}
		return false
	}
	return errors.Is(err, driverBadConn) || strings.Contains(err.Error(), "driver: bad connection")
}

var driverBadConn = errors.New("driver: bad connection")

// Classify translates a driver error into an errs.Error where one applies:
// unreachable database → UNAVAILABLE. Other errors are returned wrapped with
// what as context. sql.ErrNoRows is the caller's to translate before this.
func Classify(err error, what string) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w", what, err)
	}
	if IsUnavailable(err) {
		return errs.Unavailable("postgres", fmt.Errorf("%s: %w", what, err))
	}
	return fmt.Errorf("%s: %w", what, err)
}

// ErrStaleRead is returned by a transaction's own code when a statement's
// snapshot missed rows that committed while it ran, so that its answer and
// a later statement's disagree (an id send's insert found fewer customers
// than the ids, and the check that followed found them all). Like a
// serialization failure, running the whole transaction again may well
// succeed: IsConflict reports it, so InTxRetrying does.
var ErrStaleRead = errors.New("rows committed while the statement ran were not in its snapshot")

// IsConflict reports whether err is PostgreSQL aborting a transaction to
// break a deadlock (40P01) or for a serialization failure (40001), or
// ErrStaleRead: the transaction changed nothing, and running it again may
// well succeed.
func IsConflict(err error) bool {
	var pe *pq.Error
	return errors.Is(err, ErrStaleRead) || errors.As(err, &pe) && (pe.Code == "40P01" || pe.Code == "40001")
}

// conflictAttempts bounds InTxRetrying's runs of one transaction.
const conflictAttempts = 3

// InTxRetrying is InTx, run again when PostgreSQL aborts the transaction to
// break a deadlock or for a serialization failure (IsConflict), up to
// conflictAttempts runs in all. A transaction that changes many rows a
// worker may be changing too (cancelling a campaign's pending messages
// while claims take some of them, in another order) can deadlock; the
// client should not see a 500 for what the server can simply retry. fn must
// have no effect outside tx: it may run more than once.
func InTxRetrying(ctx context.Context, db *sqlx.DB, fn func(tx *sqlx.Tx) error) error {
	for attempt := 1; ; attempt++ {
		err := InTx(ctx, db, fn)
		if err == nil || attempt == conflictAttempts || !IsConflict(err) || ctx.Err() != nil {
			return err
		}
	}
}

// InTx runs fn in a transaction, committing if fn returns nil and rolling
// back otherwise.
func InTx(ctx context.Context, db *sqlx.DB, fn func(tx *sqlx.Tx) error) error {
	tx, err := db.BeginTxx(ctx, nil)
	if err != nil {
		return Classify(err, "begin transaction")
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return Classify(err, "commit")
	}
	return nil
}

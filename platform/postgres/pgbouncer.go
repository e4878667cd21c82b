package postgres

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"net/url"
	"strings"

	"github.com/lib/pq"
)

// Behind PgBouncer in transaction pooling mode (1.18 and every version
// without max_prepared_statements) a client connection is given a server
// connection for one transaction only, and for one statement outside a
// transaction. Nothing a session leaves on its server may be relied on
// later. lib/pq leaves two such things:
//
//   - A query with parameters outside a transaction is sent as Parse,
//     Describe, Sync, then, after the answer, Bind, Execute, Sync: at the
//     first Sync PgBouncer may hand the server to another client, and the
//     Bind then reaches a server that never saw the Parse ("unnamed prepared
//     statement does not exist"). lib/pq's binary_parameters=yes sends the
//     five messages at once, so one round trip runs on one server.
//   - A prepared statement (database/sql's Prepare, which the worker and
//     the webhook dispatcher use for their per-batch statements) is a named
//     statement on one server, used later from whichever server PgBouncer
//     picks ("prepared statement "1" does not exist", or "already exists"
//     when another client's statement of the same name lives there).
//
// pgBouncerConnector removes both: its DSN carries binary_parameters=yes and
// its connections keep a "prepared" statement as text, sent with its
// arguments in one round trip at each execution. The server then plans the
// statement each time; that is the price of transaction pooling here.

// WithBinaryParameters returns dsn with lib/pq's binary_parameters=yes: every
// query with parameters goes to the server in one round trip. []byte
// arguments are then sent in binary format, which is right for bytea only: a
// jsonb or text argument must be passed as a string.
func WithBinaryParameters(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		q := u.Query()
		q.Set("binary_parameters", "yes")
		u.RawQuery = q.Encode()
		return u.String()
	}
	for _, kv := range strings.Fields(dsn) {
		if k, _, _ := strings.Cut(kv, "="); k == "binary_parameters" {
			return dsn // the caller's choice stands in a key=value DSN
		}
	}
	return strings.TrimSpace(dsn + " binary_parameters=yes")
}

// openPgBouncer opens a pool whose connections are safe behind PgBouncer in
// transaction pooling mode (see above). Nothing is dialled yet.
func openPgBouncer(dsn string) (*sql.DB, error) {
	c, err := pq.NewConnector(WithBinaryParameters(dsn))
	if err != nil {
		return nil, err
	}
	return sql.OpenDB(pgBouncerConnector{c}), nil
}

type pgBouncerConnector struct{ c *pq.Connector }

func (p pgBouncerConnector) Driver() driver.Driver { return p.c.Driver() }

func (p pgBouncerConnector) Connect(ctx context.Context) (driver.Conn, error) {
	cn, err := p.c.Connect(ctx)
	if err != nil {
		return nil, err
	}
	full, ok := cn.(pqConn)
	if !ok {
		cn.Close()
		return nil, fmt.Errorf("postgres: lib/pq connection %T lacks an interface the PgBouncer mode forwards", cn)
	}
	return unpreparedConn{full}, nil
}

// pqConn is every interface of lib/pq's connection that database/sql looks
// for; unpreparedConn forwards them all, so wrapping changes nothing but
// Prepare.
type pqConn interface {
	driver.Conn
	driver.ConnPrepareContext
	driver.ConnBeginTx
	driver.ExecerContext
	driver.QueryerContext
	driver.Pinger
	driver.SessionResetter
	driver.Validator
	driver.NamedValueChecker
}

// unpreparedConn is a lib/pq connection whose Prepare prepares nothing on
// the server, except COPY FROM STDIN (lib/pq runs it as a simple query and
// only inside a transaction, which PgBouncer keeps on one server).
type unpreparedConn struct{ pqConn }

func (c unpreparedConn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

func (c unpreparedConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	if isCopy(query) {
		return c.pqConn.PrepareContext(ctx, query)
	}
	return unpreparedStmt{cn: c.pqConn, query: query}, nil
}

func isCopy(query string) bool {
	q := strings.TrimLeft(query, " \t\r\n(")
	return len(q) >= 4 && strings.EqualFold(q[:4], "copy")
}

// unpreparedStmt runs its query afresh, in one round trip, at each execution.
type unpreparedStmt struct {
	cn    pqConn
	query string
}

func (s unpreparedStmt) Close() error  { return nil }
func (s unpreparedStmt) NumInput() int { return -1 } // unknown: the server checks the count

func (s unpreparedStmt) Exec(args []driver.Value) (driver.Result, error) {
	return s.ExecContext(context.Background(), named(args))
}

func (s unpreparedStmt) Query(args []driver.Value) (driver.Rows, error) {
	return s.QueryContext(context.Background(), named(args))
}

func (s unpreparedStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	return s.cn.ExecContext(ctx, s.query, args)
}

func (s unpreparedStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	return s.cn.QueryContext(ctx, s.query, args)
}

func named(args []driver.Value) []driver.NamedValue {
	out := make([]driver.NamedValue, len(args))
	for i, v := range args {
		out[i] = driver.NamedValue{Ordinal: i + 1, Value: v}
	}
	return out
}

package app

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/campaignd/dispatch/platform/auth"
)

// apikey runs "dispatch apikey create NAME [SCOPE] | list | revoke ID"
// against the configured database (migrating it first, as serve would).
func apikey(ctx context.Context, cfg Config, log *slog.Logger, args []string, out io.Writer) error {
	usage := fmt.Errorf("apikey needs: create NAME [read|write|admin] | list | revoke ID\n%s", Usage)
	if len(args) == 0 {
		return usage
	}
	db, err := openMigrated(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer db.Close()
	store := auth.NewStore(db)
	svc := auth.NewService(store, auth.NewAuthenticator(store, time.Second), log)

	switch {
	case args[0] == "create" && (len(args) == 2 || len(args) == 3):
		scope := auth.ScopeAdmin
		if len(args) == 3 {
			scope = auth.Scope(args[2])
		}
		k, err := svc.Create(ctx, args[1], scope)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "created API key %d %q (%s). It is shown this once; keep it safe:\n%s\n", k.ID, k.Name, k.Scope, k.Secret)
		return nil
	case args[0] == "list" && len(args) == 1:
		keys, err := svc.List(ctx)
		if err != nil {
			return err
		}
		w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "ID\tNAME\tSCOPE\tPREFIX\tCREATED\tLAST USED\tREVOKED")
		for _, k := range keys {
			fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, k.Name, k.Scope, k.Prefix,
				stamp(&k.CreatedAt), stamp(k.LastUsedAt), stamp(k.RevokedAt))
		}
		return w.Flush()
	case args[0] == "revoke" && len(args) == 2:
		id, err := strconv.ParseInt(args[1], 10, 64)
		if err != nil || id <= 0 {
			return fmt.Errorf("apikey revoke: %q is not a key id (see dispatch apikey list)", args[1])
		}
		if err := svc.Revoke(ctx, id); err != nil {
			return err
		}
		fmt.Fprintf(out, "revoked API key %d\n", id)
		return nil
	}
	return usage
}

func stamp(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

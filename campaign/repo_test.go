package campaign

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jmoiron/sqlx"

	"github.com/campaignd/dispatch/messaging"
	"github.com/campaignd/dispatch/platform/channel"
	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/page"
	"github.com/campaignd/dispatch/platform/postgres/pgtest"
)

func TestServiceErrors(t *testing.T) {
	t.Parallel()
	te := newTestEnv(t)
	ctx := context.Background()
	c, err := te.svc.Create(ctx, CreateInput{Name: "n", Channel: "sms", BaseTemplate: "Hi {first_name}"})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("get unknown", func(t *testing.T) {
		t.Parallel()
		_, err := te.svc.Get(ctx, c.ID+1000)
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("error = %v, want ErrNotFound", err)
		}
		var e *errs.Error
		if errors.As(err, &e); e.Message == ErrNotFound.Message {
			t.Errorf("message %q does not name the id", e.Message)
		}
	})

	t.Run("preview unknown campaign", func(t *testing.T) {
		t.Parallel()
		_, err := te.svc.Preview(ctx, c.ID+1000, PreviewInput{CustomerID: ptr[int64](1)})
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("error = %v, want ErrNotFound", err)
		}
	})

	t.Run("preview unknown customer passes the finder's error", func(t *testing.T) {
		t.Parallel()
		_, err := te.svc.Preview(ctx, c.ID, PreviewInput{CustomerID: ptr[int64](404)})
		if !errors.Is(err, errCustomerNotFound) || errors.Is(err, ErrNotFound) {
			t.Fatalf("error = %v, want the customer feature's CUSTOMER_NOT_FOUND", err)
		}
		if errs.KindOf(err) != errs.KindNotFound {
			t.Errorf("kind = %v, want KindNotFound", errs.KindOf(err))
		}
	})

	t.Run("create invalid", func(t *testing.T) {
		t.Parallel()
		_, err := te.svc.Create(ctx, CreateInput{Name: "n", Channel: "sms", BaseTemplate: "{x}"})
		if !errors.Is(err, errValidation) {
			t.Fatalf("error = %v, want %s", err, errs.CodeValidation)
		}
	})
}

func TestNewServiceDefaultClock(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	svc := NewService(NewRepo(db.DB), messaging.Templates{}, testCustomers, nil)
	ctx := context.Background()
	soon := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	c, err := svc.Create(ctx, CreateInput{Name: "n", Channel: "sms", BaseTemplate: "t", ScheduledAt: &soon})
	if err != nil || c.Status != StatusScheduled {
		t.Fatalf("Create = %+v, %v; want scheduled", c, err)
	}
	past := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	if _, err := svc.Create(ctx, CreateInput{Name: "n", Channel: "sms", BaseTemplate: "t", ScheduledAt: &past}); !errors.Is(err, errValidation) {
		t.Fatalf("past schedule: error = %v, want %s", err, errs.CodeValidation)
	}
}

func TestRepoRoundTrip(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	repo := NewRepo(db.DB)
	ctx := context.Background()
	at := time.Date(2030, 1, 2, 3, 4, 5, 123456000, time.UTC)
	in := Campaign{Name: "Ünïcødé 🎉", Channel: channel.WhatsApp, Status: StatusScheduled, BaseTemplate: "Hi {first_name} 👋", ScheduledAt: &at}
	created, err := repo.Create(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	got, err := repo.Get(ctx, created.ID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(created, got); diff != "" {
		t.Errorf("Get differs from Create (-create +get):\n%s", diff)
	}
	in.ID, in.CreatedAt, in.UpdatedAt = got.ID, got.CreatedAt, got.UpdatedAt
	if diff := cmp.Diff(in, got); diff != "" {
		t.Errorf("stored campaign (-want +got):\n%s", diff)
	}
	for _, tm := range []time.Time{got.CreatedAt, got.UpdatedAt, *got.ScheduledAt} {
		if tm.Location() != time.UTC {
			t.Errorf("time %v is not UTC", tm)
		}
	}
}

// TestUnavailable checks that an unreachable database is reported as
// UNAVAILABLE (503), not as an internal error.
func TestUnavailable(t *testing.T) {
	t.Parallel()
	// Nothing listens on port 1, so every query fails to connect.
	db, err := sqlx.Open("postgres", "postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	repo := NewRepo(db)
	svc := NewService(repo, messaging.Templates{}, testCustomers, func() time.Time { return testNow })
	ctx := context.Background()

	calls := map[string]func() error{
		"create": func() error {
			_, err := svc.Create(ctx, CreateInput{Name: "n", Channel: "sms", BaseTemplate: "t"})
			return err
		},
		"get": func() error { _, err := svc.Get(ctx, 1); return err },
		"list": func() error {
			_, err := svc.List(ctx, Filter{}, page.Request{Page: 1, Size: 20})
			return err
		},
		"stats":   func() error { _, err := repo.Stats(ctx, 1); return err },
		"preview": func() error { _, err := svc.Preview(ctx, 1, PreviewInput{CustomerID: ptr[int64](1)}); return err },
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if err := call(); errs.KindOf(err) != errs.KindUnavailable {
				t.Errorf("error = %v, want kind unavailable", err)
			}
		})
	}

	t.Run("http", func(t *testing.T) {
		t.Parallel()
		te := &testEnv{svc: svc, e: newEcho(svc)}
		wantError(t, te.do(http.MethodGet, "/campaigns", ""), http.StatusServiceUnavailable, errs.CodeUnavailable, "")
		wantError(t, te.do(http.MethodGet, "/campaigns/1", ""), http.StatusServiceUnavailable, errs.CodeUnavailable, "")
	})
}

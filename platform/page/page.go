// Package page implements the list pagination every collection endpoint
// shares: page numbers over id DESC, and an opaque keyset cursor that is
// stable while records are inserted concurrently.
//
// The cursor holds the last id of the page it follows and a fingerprint of
// the filters it was issued for. Because lists are ordered by id DESC and ids
// only grow, "id < last" never repeats a record and never skips one that
// existed when the walk began; records created during the walk have larger
// ids and are (correctly) not shown.
package page

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/url"
	"strconv"

	"github.com/campaignd/dispatch/platform/errs"
)

const (
	DefaultSize = 20
	MaxSize     = 100
	// MaxPage keeps (page-1)*size far from overflowing an OFFSET.
	MaxPage = 1_000_000_000
)

// Request is a parsed page request. When AfterID is non-zero the request is a
// cursor walk and Page is only the page number the cursor stands for.
type Request struct {
	Page    int
	Size    int
	AfterID int64
	filters string
}

// Offset is the row offset for page-number requests.
func (r Request) Offset() int {
	if r.AfterID != 0 {
		return 0
	}
	return (r.Page - 1) * r.Size
}

// Info is the pagination block of a list response.
type Info struct {
	Page       int     `json:"page"`
	PageSize   int     `json:"page_size"`
	TotalCount int64   `json:"total_count"`
	TotalPages int64   `json:"total_pages"`
	NextCursor *string `json:"next_cursor"`
}

// List is the shape of every list response.
type List[T any] struct {
	Data       []T  `json:"data"`
	Pagination Info `json:"pagination"`
}

type cursor struct {
	AfterID int64  `json:"a"`
	Page    int    `json:"p"`
	Filters string `json:"f"`
}

// Parse reads page, page_size and cursor from q (from httpx.Query, which
// has rejected a malformed query string). filters are the (already
// validated) filter values of the request, in a fixed order; a cursor issued
// for other filters is rejected rather than silently mixing two lists.
func Parse(q url.Values, filters ...string) (Request, error) {
	r := Request{Page: 1, Size: DefaultSize, filters: fingerprint(filters)}
	if v := q.Get("page_size"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxSize {
			return r, errs.Validation("page_size", "page_size must be an integer from 1 to %d, got %s", MaxSize, errs.Quote(v))
		}
		r.Size = n
	}
	if v := q.Get("page"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxPage {
			return r, errs.Validation("page", "page must be an integer from 1 to %d, got %s", MaxPage, errs.Quote(v))
		}
		r.Page = n
	}
	if v := q.Get("cursor"); v != "" {
		if q.Get("page") != "" {
			return r, errs.Validation("cursor", "give either page or cursor, not both")
		}
		c, err := decode(v)
		if err != nil {
			return r, errs.Validation("cursor", "cursor is not one this service issued")
		}
		if c.Filters != r.filters {
			return r, errs.Validation("cursor", "cursor was issued for different filters; repeat the filters of the first page")
		}
		r.AfterID, r.Page = c.AfterID, c.Page
	}
	return r, nil
}

// Info builds the pagination block. lastID is the id of the last row of the
// page returned, hasMore whether rows follow it.
func (r Request) Info(total int64, lastID int64, hasMore bool) Info {
	info := Info{
		Page:       r.Page,
		PageSize:   r.Size,
		TotalCount: total,
		TotalPages: (total + int64(r.Size) - 1) / int64(r.Size),
	}
	if hasMore {
		s := encode(cursor{AfterID: lastID, Page: r.Page + 1, Filters: r.filters})
		info.NextCursor = &s
	}
	return info
}

func fingerprint(filters []string) string {
	h := sha256.New()
	for _, f := range filters {
		h.Write([]byte(strconv.Itoa(len(f))))
		h.Write([]byte{':'})
		h.Write([]byte(f))
	}
	return hex.EncodeToString(h.Sum(nil)[:6])
}

func encode(c cursor) string {
	b, _ := json.Marshal(c) // cannot fail: plain struct
	return base64.RawURLEncoding.EncodeToString(b)
}

func decode(s string) (cursor, error) {
	var c cursor
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, err
	}
	if c.AfterID <= 0 || c.Page < 2 {
		return c, errs.Validation("cursor", "bad cursor")
	}
	return c, nil
}

// Limit is how many rows to fetch for r: one more than the page, so that
// New can tell whether another page follows without a second query.
func (r Request) Limit() int { return r.Size + 1 }

// New builds a list response from rows fetched with r.Limit(), newest
// first, and total. id returns a row's id, for the next cursor. Data is
// never nil, so an empty page is JSON [].
func New[T any](rows []T, r Request, total int64, id func(T) int64) List[T] {
	hasMore := len(rows) > r.Size
	if hasMore {
		rows = rows[:r.Size]
	}
	if rows == nil {
		rows = []T{}
	}
	var lastID int64
	if len(rows) > 0 {
		lastID = id(rows[len(rows)-1])
	}
	return List[T]{Data: rows, Pagination: r.Info(total, lastID, hasMore)}
}

// UncountedInfo is the pagination block of a list too large to count on
// every page (a campaign's messages, an endpoint's deliveries): no totals.
type UncountedInfo struct {
	Page       int     `json:"page"`
	PageSize   int     `json:"page_size"`
	NextCursor *string `json:"next_cursor"`
}

// UncountedList is a list response without totals.
type UncountedList[T any] struct {
	Data       []T           `json:"data"`
	Pagination UncountedInfo `json:"pagination"`
}

// NewUncounted is New for a list without totals.
func NewUncounted[T any](rows []T, r Request, id func(T) int64) UncountedList[T] {
	l := New(rows, r, 0, id)
	return UncountedList[T]{Data: l.Data, Pagination: UncountedInfo{
		Page: l.Pagination.Page, PageSize: l.Pagination.PageSize, NextCursor: l.Pagination.NextCursor,
	}}
}

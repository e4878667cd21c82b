// Package window is a daily send window in an IANA time zone: the hours of
// the day, on the zone's wall clock, during which messages may go out.
//
// It is pure: Open and NextOpen compute from the time they are given, and
// daylight-saving changes come from the time zone database (Go's, embedded in
// the binary by importing time/tzdata here, so a container without
// /usr/share/zoneinfo still knows every zone), never from fixed offsets.
//
// Semantics, on the wall clock of TimeZone:
//   - Start is inclusive, End exclusive: 08:00–20:00 is open at 08:00:00 and
//     closed at 20:00:00.
//   - Start later than End means a window across midnight: 22:00–06:00 is
//     open from 22:00 to 06:00 the next morning. Start equal to End is
//     invalid (neither empty nor all day is meant by it).
//   - Times are "HH:MM" or "HH:MM:SS", 00:00 to 23:59:59, two digits each.
//     Seconds exist so that a window can open a few seconds from now (tests,
//     a demo); the API documents "HH:MM".
//   - A spring-forward gap: a wall-clock time that does not exist that day
//     is reached at the first instant after the gap (a 02:30 start opens at
//     03:00 on the day New York skips 02:00–03:00); a window lying wholly in
//     the gap does not open that day. A fall-back overlap: a repeated
//     wall-clock time counts each time it occurs (a 01:30–03:00 window opens
//     at the first 01:30, closes when the clock goes back to 01:00, and opens
//     again at the second 01:30).
package window

import (
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"
	_ "time/tzdata" // zones for images without a zoneinfo directory (distroless, scratch)

	"github.com/campaignd/dispatch/platform/errs"
)

// Window is a daily send window. The zero value is invalid; check a window
// from a client with Validate (Parse does) before using it.
type Window struct {
	Start    string `json:"start"`    // "HH:MM" or "HH:MM:SS", inclusive
	End      string `json:"end"`      // "HH:MM" or "HH:MM:SS", exclusive
	TimeZone string `json:"timezone"` // IANA name, such as "Africa/Nairobi"
}

// maxZoneLen bounds a zone name: the longest IANA name is about 30
// characters, and a name is looked up as a file path.
const maxZoneLen = 64

// Parse decodes a stored or received window: a JSON object, or JSON null
// (or nothing) for no window, which returns nil. The window is validated;
// errors are VALIDATION_ERRORs naming field's members (field.start,
// field.end, field.timezone), or, for JSON that is not an object, field.
func Parse(field string, data []byte) (*Window, error) {
	if len(data) == 0 || string(data) == "null" {
		return nil, nil
	}
	var w Window
	if err := json.Unmarshal(data, &w); err != nil {
		return nil, errs.Validation(field, `%s must be an object {"start":"HH:MM","end":"HH:MM","timezone":"Area/City"} or null`, field)
	}
	if err := w.Validate(field); err != nil {
		return nil, err
	}
	return &w, nil
}

// Validate checks w. Errors are VALIDATION_ERRORs naming the member of field
// that is wrong: field.start or field.end (missing, not HH:MM or HH:MM:SS, out
// of range, or End equal to Start) or field.timezone (missing, "Local", or not
// a zone the time zone database knows).
func (w Window) Validate(field string) error {
	start, err := parseClock(field+".start", w.Start)
	if err != nil {
		return err
	}
	end, err := parseClock(field+".end", w.End)
	if err != nil {
		return err
	}
	if start == end {
		return errs.Validation(field+".end", "%s.end must differ from %s.start (both %s)", field, field, errs.Quote(w.End))
	}
	if _, err := location(w.TimeZone); err != nil {
		if w.TimeZone == "" {
			return errs.Validation(field+".timezone", `%s.timezone is required: an IANA time zone such as "Africa/Nairobi"`, field)
		}
		return errs.Validation(field+".timezone", `%s.timezone must be an IANA time zone such as "Africa/Nairobi", got %s`,
			field, errs.Quote(w.TimeZone))
	}
	return nil
}

// Open reports whether the window is open at t. An invalid window is always
// open: it can only come from data that skipped Validate, and a send must
// not wait forever on it.
func (w Window) Open(t time.Time) bool {
	p, ok := w.parsed()
	return !ok || p.open(t)
}

// NextOpen returns t when the window is open at t, and otherwise the first
// instant after t at which it is, in the window's zone. An invalid window is
// always open (see Open).
func (w Window) NextOpen(t time.Time) time.Time {
	p, ok := w.parsed()
	if !ok || p.open(t) {
		return t
	}
	// A valid window opens at least once every few days (a day without an
	// opening needs the window to lie wholly in a gap), so this ends within
	// the first segments; the bound only makes that plain.
	from := t
	for range 200 {
		to := from.Add(searchSpan)
		if next, ok := p.firstOpening(t, from, to); ok {
			return next
		}
		from = to
	}
	return t
}

// searchSpan is how far one step of NextOpen looks ahead.
const searchSpan = 72 * time.Hour

// Value stores a window as JSON text (a jsonb column): a []byte would be
// sent in binary format in the PgBouncer mode, which jsonb does not read.
func (w Window) Value() (driver.Value, error) {
	b, err := json.Marshal(w)
	return string(b), err
}

// Scan reads a window stored by Value. It does not validate: Validate ran
// before it was stored.
func (w *Window) Scan(src any) error {
	switch v := src.(type) {
	case []byte:
		return json.Unmarshal(v, w)
	case string:
		return json.Unmarshal([]byte(v), w)
	}
	return fmt.Errorf("scan send window: unexpected %T", src)
}

// parsedWindow is a valid window ready to evaluate: its zone and its bounds
// in seconds after midnight.
type parsedWindow struct {
	loc        *time.Location
	start, end int
}

func (w Window) parsed() (parsedWindow, bool) {
	start, ok1 := clock(w.Start)
	end, ok2 := clock(w.End)
	loc, err := location(w.TimeZone)
	if !ok1 || !ok2 || err != nil || start == end {
		return parsedWindow{}, false
	}
	return parsedWindow{loc: loc, start: start, end: end}, true
}

// open reports whether t's wall clock in the zone lies in the window.
func (p parsedWindow) open(t time.Time) bool {
	h, m, s := t.In(p.loc).Clock()
	sod := h*3600 + m*60 + s
	if p.start < p.end {
		return sod >= p.start && sod < p.end
	}
	return sod >= p.start || sod < p.end // across midnight
}

// firstOpening returns the first instant in (t, to] at which the window is
// open, given that it is closed throughout (t, from]. The window can only
// turn open where the wall clock reaches Start (once a day, twice on a
// fall-back day, not at all when Start lies in a spring-forward gap) or where
// the zone's offset changes and the wall clock jumps into the window; every
// such instant in [from, to] is a candidate, and the earliest open one is
// the answer.
func (p parsedWindow) firstOpening(t, from, to time.Time) (time.Time, bool) {
	var best time.Time
	consider := func(c time.Time) {
		if c.After(t) && !c.After(to) && p.open(c) && (best.IsZero() || c.Before(best)) {
			best = c
		}
	}
	// The offsets in force between from and to, and the instants they change.
	lf := from.In(p.loc)
	_, off := lf.Zone()
	offsets := []int{off}
	for c := lf; ; {
		_, next := c.ZoneBounds()
		if next.IsZero() || !next.After(c) || next.After(to) {
			break
		}
		consider(next)
		_, off := next.Zone()
		offsets = append(offsets, off)
		c = next
	}
	// Each instant whose wall clock reads Start: for each day, the wall
	// time taken at each offset in force, kept when the zone really shows
	// that wall time at that instant (a gap has none, an overlap two).
	y, m, d := lf.Date()
	days := int(to.Sub(from)/(24*time.Hour)) + 2
	for i := range days {
		wall := time.Date(y, m, d+i, 0, 0, p.start, 0, time.UTC)
		for _, off := range offsets {
			c := wall.Add(-time.Duration(off) * time.Second).In(p.loc)
			if sameWall(c, wall) {
				consider(c)
			}
		}
	}
	return best, !best.IsZero()
}

// sameWall reports whether c's wall clock (in its location) reads the same
// date and time as wall's (in UTC).
func sameWall(c, wall time.Time) bool {
	cy, cm, cd := c.Date()
	wy, wm, wd := wall.Date()
	ch, cmin, cs := c.Clock()
	wh, wmin, ws := wall.Clock()
	return cy == wy && cm == wm && cd == wd && ch == wh && cmin == wmin && cs == ws
}

// parseClock reads a time of day given in field as seconds after midnight.
func parseClock(field, s string) (int, error) {
	if s == "" {
		return 0, errs.Validation(field, `%s is required: a time of day "HH:MM"`, field)
	}
	sod, ok := clock(s)
	if !ok {
		return 0, errs.Validation(field, `%s must be a time of day "HH:MM" (00:00 to 23:59) or "HH:MM:SS", got %s`,
			field, errs.Quote(s))
	}
	return sod, nil
}

// clock reads "HH:MM" or "HH:MM:SS" (two ASCII digits each, 00:00 to
// 23:59:59) as seconds after midnight.
func clock(s string) (int, bool) {
	if (len(s) != 5 && len(s) != 8) || s[2] != ':' || (len(s) == 8 && s[5] != ':') {
		return 0, false
	}
	two := func(i int) (int, bool) {
		a, b := s[i], s[i+1]
		if a < '0' || a > '9' || b < '0' || b > '9' {
			return 0, false
		}
		return int(a-'0')*10 + int(b-'0'), true
	}
	h, ok1 := two(0)
	m, ok2 := two(3)
	sec, ok3 := 0, true
	if len(s) == 8 {
		sec, ok3 = two(6)
	}
	if !ok1 || !ok2 || !ok3 || h > 23 || m > 59 || sec > 59 {
		return 0, false
	}
	return h*3600 + m*60 + sec, true
}

// locations caches loaded zones by name: time.LoadLocation reads and parses
// the zone's file on every call, and Open runs once per delivery. Only
// zones that load are kept, so the cache holds at most the database's
// few hundred names.
var locations sync.Map // string → *time.Location

var errZone = errors.New("unknown time zone")

// location loads an IANA zone. "" and "Local" are refused: LoadLocation
// takes them for UTC and the server's own zone, neither of which a client
// means.
func location(name string) (*time.Location, error) {
	if v, ok := locations.Load(name); ok {
		return v.(*time.Location), nil
	}
	if name == "" || name == "Local" || len(name) > maxZoneLen {
		return nil, errZone
	}
	loc, err := time.LoadLocation(name)
	if err != nil {
		return nil, errZone
	}
	locations.Store(name, loc)
	return loc, nil
}

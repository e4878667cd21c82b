package httpx

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/campaignd/dispatch/platform/errs"
)

// DecodeJSON decodes data, which must hold exactly one JSON value, into dst
// by BindJSON's rules: unknown fields, wrong types and trailing data are
// INVALID_JSON naming the field, and so are a key given twice in one object
// and a key that matches a field only when case is ignored ("NAME" for
// "name"), which encoding/json alone would accept, the last or the
// case-folded one silently winning. Feature code that keeps part of a body
// as json.RawMessage decodes it with DecodeJSON to get the same rules.
func DecodeJSON(data []byte, dst any) error {
	if err := CheckJSONKeys(data, dst); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return decodeError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errs.InvalidJSON("request body must hold a single JSON value")
	}
	return nil
}

// CheckJSONKeys is the key half of DecodeJSON, for code that decodes
// elements of a stream itself (a JSON import, row by row): it walks data's
// objects along dst's type and returns an INVALID_JSON error for the first
// duplicate, unknown or inexact key, naming it by its path
// ("audience.location") in the message and details.field. It stops quietly
// at anything else that is wrong (malformed JSON, a wrong type), for the
// decoder to report. Once it passes on valid JSON, json.Unmarshal into dst
// cannot meet an unknown field (for structs nested less than maxKeyDepth
// deep, which every body here is).
func CheckJSONKeys(data []byte, dst any) error {
	if dst == nil {
		return nil // nothing to check against; the decoder reports it
	}
	if e := checkKeys(data, reflect.TypeOf(dst)); e != nil {
		return e
	}
	return nil
}

// checkKeys is CheckJSONKeys.
//
// It is a small scanner of its own rather than json.Decoder.Token: only
// objects that decode into structs and maps are looked into, and every other
// value (an array of 100,000 ids, a long string, a json.RawMessage) is
// skipped with a byte loop that allocates nothing.
func checkKeys(data []byte, t reflect.Type) *errs.Error {
	w := keyWalker{data: data}
	return w.value(t, "", 0)
}

// keyWalker scans data from pos. Its methods return nil both when all is
// well and when the JSON is malformed (the decoder reports that); only key
// problems are errors here.
type keyWalker struct {
	data []byte
	pos  int
	bad  bool // malformed JSON met: stop scanning
}

// maxKeyDepth bounds the recursion along nested struct types; deeper bodies
// are left to the decoder (which has a depth limit of its own).
const maxKeyDepth = 32

// value reads one JSON value meant for a Go value of type t at path.
func (w *keyWalker) value(t reflect.Type, path string, depth int) *errs.Error {
	s := shapeOf(t)
	w.space()
	if w.bad || w.pos >= len(w.data) || depth > maxKeyDepth {
		w.bad = true
		return nil
	}
	switch c := w.data[w.pos]; {
	case s.kind == opaque:
		w.skip()
	case c == '{' && s.kind != list:
		return w.object(s, path, depth)
	case c == '[' && s.kind == list:
		w.pos++
		for first := true; w.more(']', first); first = false {
			if e := w.value(s.elem, path, depth+1); e != nil {
				return e
			}
		}
	default:
		w.skip() // a wrong type: the decoder reports it
	}
	return nil
}

func (w *keyWalker) object(s *shape, path string, depth int) *errs.Error {
	w.pos++ // '{'
	var seen map[string]struct{}
	for first := true; w.more('}', first); first = false {
		key, ok := w.key()
		if !ok {
			w.bad = true
			return nil
		}
		name := path + key
		if _, dup := seen[key]; dup {
			return errs.InvalidJSON("field %s is given twice", errs.Quote(name)).WithDetail("field", errs.Clip(name))
		}
		if seen == nil {
			seen = make(map[string]struct{}, 8)
		}
		seen[key] = struct{}{}
		elem := s.elem
		if s.kind == object {
			f, ok := s.fields[key]
			if !ok {
				if want, ok := s.folded[strings.ToLower(key)]; ok {
					return errs.InvalidJSON("unknown field %s; field names are case-sensitive: did you mean %q?",
						errs.Quote(name), path+want).WithDetail("field", errs.Clip(name))
				}
				return errs.InvalidJSON("unknown field %s", errs.Quote(name)).WithDetail("field", errs.Clip(name))
			}
			elem = f
		}
		if e := w.value(elem, name+".", depth+1); e != nil {
			return e
		}
	}
	return nil
}

// more is called after an opening delimiter (first true) and after each
// member: it consumes the separator or the closing delimiter end and
// reports whether a member follows.
func (w *keyWalker) more(end byte, first bool) bool {
	w.space()
	if w.bad || w.pos >= len(w.data) {
		w.bad = true
		return false
	}
	switch c := w.data[w.pos]; {
	case c == end:
		w.pos++
		return false
	case first:
		return true
	case c == ',':
		w.pos++
		return true
	}
	w.bad = true
	return false
}

// key reads an object key and its colon. Keys are unescaped as the decoder
// does, so "n\u0061me" is the key "name".
func (w *keyWalker) key() (string, bool) {
	w.space()
	start := w.pos
	if !w.str() {
		return "", false
	}
	raw := w.data[start:w.pos]
	w.space()
	if w.pos >= len(w.data) || w.data[w.pos] != ':' {
		return "", false
	}
	w.pos++
	// The decoder unescapes keys and turns invalid UTF-8 into U+FFFD; a
	// key needing neither is its own bytes.
	if bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw) {
		return string(raw[1 : len(raw)-1]), true
	}
	var k string
	if err := json.Unmarshal(raw, &k); err != nil {
		return "", false
	}
	return k, true
}

// str skips a string starting at pos, reporting whether there was one.
func (w *keyWalker) str() bool {
	if w.pos >= len(w.data) || w.data[w.pos] != '"' {
		return false
	}
	for i := w.pos + 1; i < len(w.data); i++ {
		switch w.data[i] {
		case '\\':
			i++
		case '"':
			w.pos = i + 1
			return true
		}
	}
	return false
}

// skip skips one value of any kind, counting brackets instead of
// recursing, so no nesting can exhaust the stack.
func (w *keyWalker) skip() {
	depth := 0
	for w.pos < len(w.data) {
		switch w.data[w.pos] {
		case '"':
			if !w.str() {
				w.bad = true
				return
			}
			if depth == 0 {
				return
			}
			continue
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				return // the end of a number or literal
			}
			depth--
			if depth == 0 {
				w.pos++
				return
			}
		case ',', ' ', '\t', '\r', '\n':
			if depth == 0 {
				return // the end of a number or literal
			}
		}
		w.pos++
	}
	if depth > 0 {
		w.bad = true
	}
}

func (w *keyWalker) space() {
	for w.pos < len(w.data) && isSpace(w.data[w.pos]) {
		w.pos++
	}
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// shape is what checkKeys needs to know about a Go type.
type shape struct {
	kind   shapeKind
	fields map[string]reflect.Type // object: JSON name → field type
	folded map[string]string       // object: lower-cased JSON name → JSON name
	elem   reflect.Type            // dict, list: the element type
}

type shapeKind int

const (
	opaque shapeKind = iota // decoded without looking at keys: skipped whole
	object                  // a struct: keys must be its JSON field names, exactly
	dict                    // a map: any key, once
	list                    // a slice or array of something with keys
)

var (
	shapes          sync.Map // reflect.Type → *shape
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

func shapeOf(t reflect.Type) *shape {
	if s, ok := shapes.Load(t); ok {
		return s.(*shape)
	}
	s, _ := shapes.LoadOrStore(t, buildShape(t))
	return s.(*shape)
}

func buildShape(t reflect.Type) *shape {
	t = deref(t)
	if custom(t) {
		return &shape{kind: opaque}
	}
	switch t.Kind() {
	case reflect.Struct:
		s := &shape{kind: object, fields: map[string]reflect.Type{}, folded: map[string]string{}}
		addFields(s, t, 0)
		return s
	case reflect.Map:
		// A dict even when its values hold no keys: its own keys must not repeat.
		return &shape{kind: dict, elem: t.Elem()}
	case reflect.Slice, reflect.Array:
		if t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Uint8 {
			return &shape{kind: opaque} // []byte is base64 text
		}
		if hasKeys(t.Elem()) {
			return &shape{kind: list, elem: t.Elem()}
		}
	}
	return &shape{kind: opaque}
}

// hasKeys reports whether a value of type t can hold object keys worth
// checking, looking one level deep (enough for the bodies this service
// takes; deeper lists of lists are walked as lists).
func hasKeys(t reflect.Type) bool {
	t = deref(t)
	if custom(t) {
		return false
	}
	switch t.Kind() {
	case reflect.Struct, reflect.Map, reflect.Slice, reflect.Array:
		return !(t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Uint8)
	}
	return false
}

// custom reports types that decode themselves (json.RawMessage, time.Time)
// and interfaces: their keys are checked, if at all, by whoever decodes them.
func custom(t reflect.Type) bool {
	return t.Kind() == reflect.Interface ||
		t.Implements(jsonUnmarshaler) || reflect.PointerTo(t).Implements(jsonUnmarshaler) ||
		t.Implements(textUnmarshaler) || reflect.PointerTo(t).Implements(textUnmarshaler)
}

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

// addFields adds t's JSON fields to s as encoding/json names them: the tag's
// name or the Go name, "-" left out, untagged embedded structs promoted (a
// shallower field wins a clash).
func addFields(s *shape, t reflect.Type, depth int) {
	if depth > 8 {
		return
	}
	var embedded []reflect.Type
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" && deref(f.Type).Kind() == reflect.Struct {
			embedded = append(embedded, deref(f.Type))
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		if _, taken := s.fields[name]; taken {
			continue
		}
		s.fields[name] = f.Type
		s.folded[strings.ToLower(name)] = name
	}
	for _, e := range embedded {
		addFields(s, e, depth+1)
	}
}

package customer

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"slices"
	"strings"

	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/httpx"
)

// This file reads the body of POST /customers/import as a stream of rows.
// Decoding problems (the body is not a JSON array or CSV at all) end the
// stream with an error; problems with the values of rows are left to
// Service.Import, which reports them all together.

// csvColumns are the columns a CSV import may have, in any order.
var csvColumns = []string{"phone", "first_name", "last_name", "location", "preferred_product"}

// readJSON reads the opening '[' of a JSON array of customer objects and
// returns the array's rows, decoded one element at a time as they are ranged
// over: the body is never held whole. A row past maxRows, a malformed
// element or anything after the closing ']' ends the rows with an error.
// Unknown fields are rejected.
func readJSON(body io.Reader, maxRows int) (iter.Seq2[ImportRow, error], error) {
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	tok, err := dec.Token()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errs.InvalidJSON("request body is empty; a JSON array of customers is required")
		}
		return nil, jsonError(err, -1)
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return nil, errs.InvalidJSON("request body must be a JSON array of customer objects")
	}
	return func(yield func(ImportRow, error) bool) {
		for i := 0; dec.More(); i++ {
			if i == maxRows {
				yield(ImportRow{}, errTooManyRows(maxRows))
				return
			}
			// Each row is checked for repeated and wrongly-cased keys, which
			// the decoder alone would accept, by the same rule as every body.
			var raw json.RawMessage
			var in Input
			if err := dec.Decode(&raw); err != nil {
				yield(ImportRow{}, jsonError(err, i))
				return
			}
			if err := httpx.CheckJSONKeys(raw, &in); err != nil {
				yield(ImportRow{}, rowError(err, i))
				return
			}
			if err := json.Unmarshal(raw, &in); err != nil {
				yield(ImportRow{}, jsonError(err, i))
				return
			}
			if !yield(ImportRow{Input: in}, nil) {
				return
			}
		}
		if _, err := dec.Token(); err != nil { // the closing ']'
			yield(ImportRow{}, jsonError(err, -1))
			return
		}
		if _, err := dec.Token(); !errors.Is(err, io.EOF) {
			if err != nil {
				yield(ImportRow{}, jsonError(err, -1))
				return
			}
			yield(ImportRow{}, errs.InvalidJSON("request body must hold a single JSON array"))
		}
	}, nil
}

// jsonError turns a decoding error of row i (-1: outside any row) into the
// API's error, naming the row and field where it can.
func jsonError(err error, i int) error {
	var mbe *http.MaxBytesError
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &mbe):
		return errTooLarge(mbe.Limit)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return errs.InvalidJSON("request body is truncated JSON")
	case errors.As(err, &syn):
		return errs.InvalidJSON("malformed JSON at byte %d", syn.Offset)
	case errors.As(err, &typ) && i >= 0:
		if typ.Field == "" {
			return errs.InvalidJSON("row %d must be a JSON object, not %s", i, errs.Clip(typ.Value)).WithDetail("index", i)
		}
		return errs.InvalidJSON("row %d: field %s must be a string, not %s", i, errs.Quote(typ.Field), errs.Clip(typ.Value)).
			WithDetail("index", i).WithDetail("field", errs.Clip(typ.Field))
	case strings.HasPrefix(err.Error(), "json: unknown field ") && i >= 0:
		field := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return errs.InvalidJSON("row %d: unknown field %s", i, errs.Quote(field)).
			WithDetail("index", i).WithDetail("field", errs.Clip(field))
	}
	return errs.InvalidJSON("invalid JSON: %s", errs.Clip(err.Error()))
}

// rowError places httpx's error about row i's keys at the row.
func rowError(err error, i int) error {
	var e *errs.Error
	if !errors.As(err, &e) {
		return err
	}
	return errs.InvalidJSON("row %d: %s", i, e.Message).WithDetail("index", i).WithDetail("field", e.Details["field"])
}

// readCSV reads the header of CSV whose first line names the columns
// (csvColumns, any order and case; phone required) and returns its rows,
// read one line at a time as they are ranged over. Each row keeps the file
// line it starts on, so problems can be reported where the client will look
// for them. A row past maxRows or a malformed line ends the rows with an
// error.
func readCSV(body io.Reader, maxRows int) (iter.Seq2[ImportRow, error], error) {
	r := csv.NewReader(body)
	r.ReuseRecord = true // fields are fresh strings; only the slice is reused
	header, err := r.Read()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errs.Validation("header", "CSV body is empty; its first line must name the columns (%s)",
				strings.Join(csvColumns, ", "))
		}
		return nil, csvError(err)
	}
	col := make(map[string]int, len(header))
	for i, name := range header {
		if i == 0 {
			name = strings.TrimPrefix(name, "\ufeff") // spreadsheets often start the file with a BOM
		}
		name = strings.ToLower(strings.TrimSpace(name))
		if !slices.Contains(csvColumns, name) {
			return nil, errs.Validation("header", "unknown CSV column %s; the columns are %s",
				errs.Quote(name), strings.Join(csvColumns, ", "))
		}
		if _, dup := col[name]; dup {
			return nil, errs.Validation("header", "CSV column %s appears twice", errs.Quote(name))
		}
		col[name] = i
	}
	if _, ok := col["phone"]; !ok {
		return nil, errs.Validation("header", "CSV header must include a phone column")
	}
	field := func(rec []string, name string) string {
		if i, ok := col[name]; ok {
			return rec[i]
		}
		return ""
	}

	return func(yield func(ImportRow, error) bool) {
		for n := 0; ; n++ {
			rec, err := r.Read()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				yield(ImportRow{}, csvError(err))
				return
			}
			if n == maxRows {
				yield(ImportRow{}, errTooManyRows(maxRows))
				return
			}
			line, _ := r.FieldPos(0)
			row := ImportRow{Line: line, Input: Input{
				Phone:            field(rec, "phone"),
				FirstName:        field(rec, "first_name"),
				LastName:         field(rec, "last_name"),
				Location:         field(rec, "location"),
				PreferredProduct: field(rec, "preferred_product"),
			}}
			if !yield(row, nil) {
				return
			}
		}
	}, nil
}

// csvError turns a CSV reading error into the API's error.
func csvError(err error) error {
	var mbe *http.MaxBytesError
	var pe *csv.ParseError
	switch {
	case errors.As(err, &mbe):
		return errTooLarge(mbe.Limit)
	case errors.As(err, &pe):
		msg := pe.Err.Error()
		if errors.Is(pe.Err, csv.ErrFieldCount) {
			msg = "it has a different number of fields than the header"
		}
		return errs.Validation("csv", "malformed CSV at line %d: %s", pe.Line, msg).WithDetail("line", pe.Line)
	}
	// The body could not be read at all, e.g. the client went away.
	return errs.Validation("body", "reading the request body failed: %v", err)
}

func errTooLarge(limit int64) error {
	return errs.New(errs.KindTooLarge, errs.CodeTooLarge,
		fmt.Sprintf("import body is larger than the %d-byte limit; split it into several imports", limit))
}

func errTooManyRows(limit int) error {
	return errs.Validation("rows", "an import may hold at most %d rows; split it into several imports", limit)
}

func errImportsBusy(limit int) error {
	return errs.New(errs.KindRateLimited, errs.CodeRateLimited,
		fmt.Sprintf("this replica is already running %d imports, its limit; retry after the number of seconds in Retry-After", limit))
}

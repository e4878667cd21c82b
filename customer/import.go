package customer

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"runtime"
	"sync"

	"github.com/campaignd/dispatch/platform/errs"
)

// maxReportedRows caps details.rows of a rejected import, so that a file
// with 100,000 bad rows gets a readable answer; details.invalid_rows still
// counts them all.
const maxReportedRows = 100

// importBatch is how many rows an import validates and inserts at a time:
// enough to keep every CPU busy normalising and to make a COPY worth its
// round trip (20 for 100,000 rows), few enough that a batch is about a
// megabyte, whatever the import's size.
const importBatch = 5000

// Import stores the rows that rows yields, all or nothing. It ranges over
// rows once, a batch at a time: each batch is validated (every field, the
// phone normalised to E.164, repeated phones found) as soon as it is read,
// and inserted by the import's transaction while the next one is read and
// validated. So an import holds two batches of rows in memory, plus the
// position of each phone it has seen (a few megabytes for 100,000 rows). An
// error yielded by rows (a malformed body) ends the import with that error,
// storing nothing.
//
// A row with an invalid field, a phone an earlier row of the import has,
// or a phone an existing customer has makes the import a VALIDATION_ERROR:
// details.rows lists the first 100 problems (as RowError, in import order)
// and details.invalid_rows counts the bad rows; nothing is stored, and every
// row is still read and checked, so that the report is complete. A phone
// found taken when inserting that is gone when the import looks up its
// owner (a concurrent request created and removed it) is ErrPhoneTaken. An
// import without rows is a VALIDATION_ERROR.
//
// Rows inserted stay invisible to other requests until the import commits;
// a concurrent request creating a customer with one of their phones waits
// for the import to end.
func (s *Service) Import(ctx context.Context, rows iter.Seq2[ImportRow, error]) (ImportResult, error) {
	w := startImportWriter(ctx, s.repo)
	defer w.stop()
	imp := importer{region: s.region, firstRow: make(map[uint64]rowRef)}
	batch := make([]ImportRow, 0, importBatch)
	for row, err := range rows {
		if err != nil {
			return ImportResult{}, err
		}
		batch = append(batch, row)
		if len(batch) == importBatch {
			if err := w.send(imp.check(batch)); err != nil {
				return ImportResult{}, err
			}
			batch = batch[:0]
		}
	}
	if len(batch) > 0 {
		if err := w.send(imp.check(batch)); err != nil {
			return ImportResult{}, err
		}
	}
	if imp.rows == 0 {
		return ImportResult{}, errs.Validation("rows", "the import holds no rows; nothing was imported")
	}
	if err := w.wait(); err != nil {
		return ImportResult{}, err
	}
	if bad := imp.bad + w.takenRows; bad > 0 {
		return ImportResult{}, imp.rejection(w.taken, bad)
	}
	if err := w.tx.commit(); err != nil { // no row is bad, so every batch was inserted
		return ImportResult{}, err
	}
	if imp.rows >= analyzeAfterImport {
		// Committed: a failure here is logged, not the import's.
		if err := s.repo.analyze(ctx); err != nil {
			s.log.Warn("customers imported, but their planner statistics were not refreshed; "+
				"audience sends may plan poorly until autovacuum analyses the table", "rows", imp.rows, "err", err)
		}
	}
	return ImportResult{Imported: imp.rows}, nil
}

// analyzeAfterImport is the import size from which Import refreshes the
// planner's statistics on customers before it answers. An audience send
// reads customers in id order a chunk at a time; without statistics
// PostgreSQL estimates a chunk's id range at a few rows and reads every
// customer in the range, then sorts them, for each chunk: 480 ms instead of
// 1.3 ms per 5,000-customer chunk of a 1,000,000-customer table, so a send
// right after a large import would take minutes instead of seconds, until
// autovacuum got to the table (a minute or more after the import, if it
// runs at all). ANALYZE samples a fixed number of rows: about 0.15 s at a
// million customers.
const analyzeAfterImport = 10_000

// importer validates an import's rows, batch by batch, in import order.
type importer struct {
	region   string
	rows     int               // rows read so far
	bad      int               // rows with an invalid field or a phone an earlier row has
	report   []problem         // the first maxReportedRows of those problems, in import order
	firstRow map[uint64]rowRef // e164Key(phone) → the first row that has it
}

// rowRef is where a row is: its 0-based position in the import and the CSV
// line it starts on (0 for JSON).
type rowRef struct{ pos, line int }

// problem is one problem with one row of an import.
type problem struct {
	rowRef
	FieldError
}

// check validates batch, the rows after the imp.rows already read, records
// its problems and returns what the writer is to do with it.
func (imp *importer) check(batch []ImportRow) importJob {
	clean, invalid := normalizeAll(batch, imp.region)
	// The job's rows are clean's, compacted in place.
	job := importJob{rows: clean[:0], at: make([]checkedRow, 0, len(batch)), valid: imp.bad == 0}
	for i, row := range batch {
		at := rowRef{imp.rows + i, row.Line}
		bad := len(invalid[i]) > 0
		for _, fe := range invalid[i] {
			imp.note(problem{at, fe})
		}
		if p := clean[i].Phone; p != "" {
			if first, dup := imp.firstRow[e164Key(p)]; dup {
				imp.note(problem{at, FieldError{"phone",
					fmt.Sprintf("phone %s is already used by %s of this import", p, first.position())}})
				bad = true
			} else {
				imp.firstRow[e164Key(p)] = at
				job.rows = append(job.rows, clean[i])
				job.at = append(job.at, checkedRow{at, bad})
			}
		}
		if bad {
			imp.bad++
			job.valid = false
		}
	}
	imp.rows += len(batch)
	return job
}

// e164Key packs a phone as normalize returns it, in E.164 ("+", then at
// most 15 digits, the first not 0), into the number its digits write: a
// different number for every phone, and as a map key half the memory of the
// string, which it does not keep alive.
func e164Key(e164 string) uint64 {
	var k uint64
	for i := 1; i < len(e164); i++ {
		k = k*10 + uint64(e164[i]-'0')
	}
	return k
}

// note records p, if fewer than maxReportedRows problems are recorded.
func (imp *importer) note(p problem) {
	if len(imp.report) < maxReportedRows {
		imp.report = append(imp.report, p)
	}
}

// rejection is the VALIDATION_ERROR of an import with badRows bad rows: its
// problems and the phones found taken merged in import order (a row's
// field problems first), the first maxReportedRows of them.
func (imp *importer) rejection(taken []problem, badRows int) error {
	report := make([]RowError, 0, min(len(imp.report)+len(taken), maxReportedRows))
	i, j := 0, 0
	for len(report) < maxReportedRows && (i < len(imp.report) || j < len(taken)) {
		if j == len(taken) || (i < len(imp.report) && imp.report[i].pos <= taken[j].pos) {
			report = append(report, imp.report[i].rowError())
			i++
		} else {
			report = append(report, taken[j].rowError())
			j++
		}
	}
	return errs.New(errs.KindValidation, errs.CodeValidation,
		fmt.Sprintf("%d of %d rows are invalid; nothing was imported", badRows, imp.rows)).
		WithDetail("rows", report).
		WithDetail("invalid_rows", badRows)
}

// importJob is one batch handed to the writer: the rows whose phone no
// earlier row has, normalised, and where each is. valid says that no row of
// the import so far is bad, so the batch is to be inserted; otherwise the
// import has failed and the batch's phones are only looked up, for the
// report.
type importJob struct {
	rows  []Input
	at    []checkedRow // at[i] is where rows[i] is
	valid bool
}

// checkedRow is where a row is, and whether a field of it is invalid (its
// phone is looked up all the same).
type checkedRow struct {
	rowRef
	bad bool
}

// importWriter inserts an import's batches in one transaction, on a
// goroutine of its own, so that the database stores one batch while the
// next is read and validated. Once a batch is not valid or a phone is found
// taken, it rolls the transaction back and only looks up, batch by batch,
// which phones customers have. send, wait and stop are for the goroutine
// that reads the import; the fields below are the writer's, for that
// goroutine to read once wait has returned.
type importWriter struct {
	repo *Repo
	ctx  context.Context
	jobs chan importJob
	done chan struct{} // closed when the writer's goroutine exits
	sent bool          // jobs is closed

	tx        *importTx // the transaction; nil before the first insert and once the import failed
	failed    bool      // nothing will be stored
	taken     []problem // the first maxReportedRows rows whose phone a customer has, in import order
	takenRows int       // rows whose phone a customer has and that have no other problem
	err       error     // why the goroutine stopped early
}

func startImportWriter(ctx context.Context, repo *Repo) *importWriter {
	w := &importWriter{repo: repo, ctx: ctx, jobs: make(chan importJob), done: make(chan struct{})}
	// Exits when jobs is closed (by wait or stop) or when a job fails.
	go func() {
		defer close(w.done)
		for job := range w.jobs {
			if err := w.handle(job); err != nil {
				w.err = err
				return
			}
		}
	}()
	return w
}

// send hands job to the writer, waiting while it handles the one before.
// It returns the writer's error if the writer stopped on one.
func (w *importWriter) send(job importJob) error {
	select {
	case w.jobs <- job:
		return nil
	case <-w.done:
		return w.err
	}
}

// wait returns once the writer has handled every job sent, with its error.
func (w *importWriter) wait() error {
	if !w.sent {
		close(w.jobs)
		w.sent = true
	}
	<-w.done
	return w.err
}

// stop waits for the writer and rolls back what it did not commit.
func (w *importWriter) stop() {
	_ = w.wait()
	if w.tx != nil {
		w.tx.rollback() // after a commit, nothing
	}
}

func (w *importWriter) handle(job importJob) error {
	if job.valid && !w.failed {
		if w.tx == nil {
			tx, err := w.repo.beginImport(w.ctx)
			if err != nil {
				return err
			}
			w.tx = tx
		}
		err := w.tx.insert(w.ctx, job.rows)
		if err == nil {
			return nil
		}
		if !errors.Is(err, ErrPhoneTaken) {
			return err
		}
	}
	// The import fails: undo its inserts, so that looking up the batch's
	// phones finds the customers who had them before.
	if w.tx != nil {
		w.tx.rollback()
		w.tx = nil
	}
	w.failed = true
	phones := make([]string, len(job.rows))
	for i, r := range job.rows {
		phones[i] = r.Phone
	}
	owners, err := w.repo.PhoneOwners(w.ctx, phones)
	if err != nil {
		return err
	}
	if job.valid && len(owners) == 0 {
		// The insert found a phone taken that no customer has now.
		return ErrPhoneTaken.Withf("a phone in the import was given to another customer while it ran; nothing was imported").
			WithDetail("field", "phone")
	}
	for i, r := range job.rows {
		id, ok := owners[r.Phone]
		if !ok {
			continue
		}
		if !job.at[i].bad {
			w.takenRows++
		}
		if len(w.taken) < maxReportedRows {
			w.taken = append(w.taken, problem{job.at[i].rowRef, FieldError{"phone",
				fmt.Sprintf("phone %s already belongs to customer %d", r.Phone, id)}})
		}
	}
	return nil
}

// position names r as a client finds it in the file.
func (r rowRef) position() string {
	if r.line > 0 {
		return fmt.Sprintf("line %d", r.line)
	}
	return fmt.Sprintf("index %d", r.pos)
}

func (p problem) rowError() RowError {
	e := RowError{Field: p.Field, Message: p.Message}
	if p.line > 0 {
		e.Line = p.line
	} else {
		e.Index = &p.pos
	}
	return e
}

// normalizeAll normalises every row, on all CPUs for large batches: phone
// parsing (libphonenumber's regular expressions, ~10µs a number) is most of
// an import's cost, and rows are independent. invalid[i] lists row i's
// problems.
func normalizeAll(rows []ImportRow, region string) (clean []Input, invalid [][]FieldError) {
	clean = make([]Input, len(rows))
	invalid = make([][]FieldError, len(rows))
	const minPerWorker = 1000 // below this, goroutines cost more than they save
	workers := max(1, min(runtime.GOMAXPROCS(0), len(rows)/minPerWorker))
	per := (len(rows) + workers - 1) / workers
	var wg sync.WaitGroup
	for start := 0; start < len(rows); start += per {
		end := min(start+per, len(rows))
		// Each worker writes only its own range of clean and invalid, and
		// exits when the range is done.
		wg.Go(func() {
			for i := start; i < end; i++ {
				clean[i], invalid[i] = rows[i].Input.normalize(region)
			}
		})
	}
	wg.Wait()
	return clean, invalid
}

package customer

import (
	"cmp"
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/campaignd/dispatch/platform/errs"
	"github.com/campaignd/dispatch/platform/page"
)

// maxReportedRows caps details.rows of a rejected import, so that a file
// with 100,000 bad rows gets a readable answer; details.invalid_rows still
// counts them all.
const maxReportedRows = 100

// Service is the customer feature's use cases. It is safe for concurrent use.
type Service struct {
	repo   *Repo
	region string
}

// NewService returns a Service storing through repo. defaultRegion (a
// two-letter region code such as "US" or "KE", any case) is how phones
// written without a +country code are read. An unknown region is not an
// error here, but every such phone is then rejected as invalid; check
// configuration with ValidRegion.
func NewService(repo *Repo, defaultRegion string) *Service {
	return &Service{repo: repo, region: strings.ToUpper(strings.TrimSpace(defaultRegion))}
}

// Get returns the customer with id, or an error matching ErrNotFound.
func (s *Service) Get(ctx context.Context, id int64) (Customer, error) {
	return s.repo.Get(ctx, id)
}

// OptOut records that customer id must never be messaged on ch and returns
// the customer as it now is. It is idempotent: opting out of a channel the
// customer already opted out of succeeds and changes nothing. An invalid ch
// is a VALIDATION_ERROR naming the channel field (checked before the
// customer is looked up); an unknown customer is an error matching
// ErrNotFound. The campaign and messaging features enforce the opt-out by
// reading customer_opt_outs; this feature only records it.
func (s *Service) OptOut(ctx context.Context, id int64, ch Channel) (Customer, error) {
	if err := ch.validate(); err != nil {
		return Customer{}, err
	}
	if err := s.repo.OptOut(ctx, id, ch); err != nil {
		return Customer{}, err
	}
	return s.repo.Get(ctx, id)
}

// OptIn removes customer id's opt-out of ch, so the customer may be messaged
// on it again, and returns the customer as it now is. Opting in to a channel
// the customer has not opted out of succeeds and changes nothing. Errors are
// as for OptOut.
func (s *Service) OptIn(ctx context.Context, id int64, ch Channel) (Customer, error) {
	if err := ch.validate(); err != nil {
		return Customer{}, err
	}
	if err := s.repo.OptIn(ctx, id, ch); err != nil {
		return Customer{}, err
	}
	// An unknown customer had nothing to delete; Get reports it.
	return s.repo.Get(ctx, id)
}

// List returns one page of the customers f selects, newest first, with its
// pagination block. Each customer carries its opt-outs. A cursor request
// (req.AfterID set) continues after the cursor's last id, so a walk never
// repeats or skips a customer that existed when it began. total_count counts
// every customer f selects.
func (s *Service) List(ctx context.Context, f Filter, req page.Request) (page.List[Customer], error) {
	f = f.normalized()
	rows, err := s.repo.List(ctx, f, req.Limit(), req.Offset(), req.AfterID)
	if err != nil {
		return page.List[Customer]{}, err
	}
	total, err := s.repo.Count(ctx, f)
	if err != nil {
		return page.List[Customer]{}, err
	}
	return page.New(rows, req, total, func(c Customer) int64 { return c.ID }), nil
}

// Create validates in, normalises its phone to E.164 and stores it. Invalid
// input is a VALIDATION_ERROR naming the field; a phone another customer has
// is ErrPhoneTaken.
func (s *Service) Create(ctx context.Context, in Input) (Customer, error) {
	clean, err := in.validate(s.region)
	if err != nil {
		return Customer{}, err
	}
	return s.repo.Create(ctx, clean)
}

// Import stores rows all-or-nothing. Every row is validated first: an
// invalid field, a phone repeated within rows, or a phone an existing
// customer has makes the whole import a VALIDATION_ERROR whose details.rows
// lists the problems (the first 100, as RowError, in row order) and
// details.invalid_rows counts the bad rows; nothing is stored. Otherwise all
// rows are inserted in one transaction, in batches. A phone taken by a
// concurrent request between the check and the insert is ErrPhoneTaken, and
// nothing is stored either. An empty import is a VALIDATION_ERROR.
func (s *Service) Import(ctx context.Context, rows []ImportRow) (ImportResult, error) {
	if len(rows) == 0 {
		return ImportResult{}, errs.Validation("rows", "the import holds no rows; nothing was imported")
	}

	type problem struct {
		row int
		FieldError
	}
	var problems []problem
	clean, invalid := normalizeAll(rows, s.region)
	firstRow := make(map[string]int, len(rows)) // phone → first row that has it
	for i, in := range clean {
		for _, fe := range invalid[i] {
			problems = append(problems, problem{i, fe})
		}
		if in.Phone == "" {
			continue // the phone itself is invalid, reported above
		}
		if j, dup := firstRow[in.Phone]; dup {
			problems = append(problems, problem{i, FieldError{"phone",
				fmt.Sprintf("phone %s is already used by %s of this import", in.Phone, rows[j].position(j))}})
			continue
		}
		firstRow[in.Phone] = i
	}

	phones := make([]string, 0, len(firstRow))
	for p := range firstRow {
		phones = append(phones, p)
	}
	owners, err := s.repo.PhoneOwners(ctx, phones)
	if err != nil {
		return ImportResult{}, err
	}
	for phone, id := range owners {
		problems = append(problems, problem{firstRow[phone], FieldError{"phone",
			fmt.Sprintf("phone %s already belongs to customer %d", phone, id)}})
	}

	if len(problems) > 0 {
		// Stable: a row's own field problems stay in body order.
		slices.SortStableFunc(problems, func(a, b problem) int { return cmp.Compare(a.row, b.row) })
		badRows := 0
		report := make([]RowError, 0, min(len(problems), maxReportedRows))
		for k, p := range problems {
			if k == 0 || p.row != problems[k-1].row {
				badRows++
			}
			if len(report) < maxReportedRows {
				report = append(report, rows[p.row].rowError(p.row, p.FieldError))
			}
		}
		return ImportResult{}, errs.New(errs.KindValidation, errs.CodeValidation,
			fmt.Sprintf("%d of %d rows are invalid; nothing was imported", badRows, len(rows))).
			WithDetail("rows", report).
			WithDetail("invalid_rows", badRows)
	}

	n, err := s.repo.InsertMany(ctx, clean)
	if err != nil {
		return ImportResult{}, err
	}
	return ImportResult{Imported: int(n)}, nil
}

// normalizeAll normalises every row, on all CPUs for large imports: phone
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

// position names row i of an import as a client finds it in the file.
func (r ImportRow) position(i int) string {
	if r.Line > 0 {
		return fmt.Sprintf("line %d", r.Line)
	}
	return fmt.Sprintf("index %d", i)
}

func (r ImportRow) rowError(i int, fe FieldError) RowError {
	e := RowError{Field: fe.Field, Message: fe.Message}
	if r.Line > 0 {
		e.Line = r.Line
	} else {
		e.Index = &i
	}
	return e
}

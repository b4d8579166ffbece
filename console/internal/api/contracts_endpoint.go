package api

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/cloudskin/cloudskin/console/internal/auth"
	"github.com/cloudskin/cloudskin/console/internal/dataspace"
	"github.com/cloudskin/cloudskin/console/internal/metrics"
	"github.com/cloudskin/cloudskin/console/internal/store"
)

// Contracts and policies. A consumer requests a purchase or a rental; the
// contract policy is checked then and on every read, so a policy change,
// a profile change or the end of a rental takes effect at once. The
// provider (or an admin) validates a request with a signed document.

func orOpen(policy string) string {
	if policy == "" {
		b, _ := json.Marshal(dataspace.OpenPolicy())
		return string(b)
	}
	return policy
}

func policiesJSON(access, contract *dataspace.Policy) (string, string, error) {
	out := make([]string, 2)
	for i, p := range []*dataspace.Policy{access, contract} {
		if p == nil {
			open := dataspace.OpenPolicy()
			p = &open
		}
		if err := p.Validate(); err != nil {
			return "", "", echo.NewHTTPError(http.StatusBadRequest, err.Error())
		}
		b, _ := json.Marshal(p)
		out[i] = string(b)
	}
	return out[0], out[1], nil
}

func parsePolicy(raw string) dataspace.Policy {
	var p dataspace.Policy
	if json.Unmarshal([]byte(orOpen(raw)), &p) != nil {
		return dataspace.Policy{} // unreadable: permits nobody
	}
	return p
}

// party is the caller as the policies see it: their verified profile.
func (s *Server) party(c echo.Context, purpose string) (*store.User, dataspace.Party, error) {
	u, err := s.Store.UserByName(c.Request().Context(), subject(c))
	if err != nil {
		return nil, dataspace.Party{}, err
	}
	return u, dataspace.Party{Country: u.Nationality, Industry: u.Sector, OrgType: u.OrgType, NonProfit: u.NonProfit, Purpose: purpose}, nil
}

func role(c echo.Context) string {
	if claims, _ := c.Get(claimsKey).(*auth.Claims); claims != nil {
		return claims.Role
	}
	return ""
}

func (s *Server) putPolicies(c echo.Context) error {
	d, _, err := s.ownDataset(c)
	if err != nil {
		return err
	}
	var req struct {
		AccessPolicy   *dataspace.Policy `json:"access_policy"`
		ContractPolicy *dataspace.Policy `json:"contract_policy"`
	}
	if err := bind(c, &req); err != nil {
		return err
	}
	access, contract, err := policiesJSON(req.AccessPolicy, req.ContractPolicy)
	if err != nil {
		return err
	}
	if err := s.Store.SetDatasetPolicies(c.Request().Context(), d.ID, access, contract); err != nil {
		return err
	}
	s.Log.Info("dataset policies changed", "dataset", d.ID, "by", subject(c))
	d, err = s.Store.DatasetByID(c.Request().Context(), d.ID)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, datasetView(d))
}

// catalog: the datasets whose access policy lets the caller see them,
// without their data, with whether the caller qualifies for a contract.
func (s *Server) catalog(c echo.Context) error {
	_, me, err := s.party(c, "")
	if err != nil {
		return err
	}
	ds, err := s.Store.ListDatasets(c.Request().Context(), "")
	if err != nil {
		return err
	}
	type entry struct {
		DatasetView
		Qualifies bool   `json:"qualifies"`
		Why       string `json:"why,omitempty"`
	}
	out := []entry{}
	for i := range ds {
		access := parsePolicy(ds[i].AccessPolicy)
		if ok, _ := access.Allows(me); !ok && role(c) != store.RoleAdmin && ds[i].Owner != subject(c) {
			continue
		}
		contract := parsePolicy(ds[i].ContractPolicy)
		ok, why := contract.Allows(me)
		v := datasetView(&ds[i])
		v.Engine = nil
		out = append(out, entry{DatasetView: v, Qualifies: ok, Why: why})
	}
	return c.JSON(http.StatusOK, map[string]any{"datasets": out})
}

// ContractView is a contract as the API shows it.
type ContractView struct {
	ID       string     `json:"id"`
	Dataset  string     `json:"dataset"`
	Consumer string     `json:"consumer"`
	Provider string     `json:"provider"`
	Kind     string     `json:"kind"`
	Purpose  string     `json:"purpose,omitempty"`
	State    string     `json:"state"`
	Active   bool       `json:"active"`
	StartAt  time.Time  `json:"start_at"`
	EndAt    *time.Time `json:"end_at,omitempty"`
	AgreedBy string     `json:"agreed_by,omitempty"`
	AgreedAt *time.Time `json:"agreed_at,omitempty"`
}

func contractView(k *store.Contract) ContractView {
	end := time.Time{}
	if k.EndAt != nil {
		end = *k.EndAt
	}
	return ContractView{ID: k.ID, Dataset: k.Dataset, Consumer: k.Consumer, Provider: k.Provider, Kind: k.Kind, Purpose: k.Purpose,
		State: k.State, Active: dataspace.Active(k.State, end, time.Now()), StartAt: k.StartAt, EndAt: k.EndAt, AgreedBy: k.AgreedBy, AgreedAt: k.AgreedAt}
}

type contractRequest struct {
	Dataset string     `json:"dataset"`
	Purpose string     `json:"purpose"`
	EndAt   *time.Time `json:"end_at"` // rentals
}

// requestContract: a consumer asks for a dataset; the policies are checked
// now. A free dataset's contract is finalized at once.
func (s *Server) requestContract(c echo.Context) error {
	var req contractRequest
	if err := bind(c, &req); err != nil {
		return err
	}
	if len(req.Purpose) > 64 {
		return echo.NewHTTPError(http.StatusBadRequest, "purpose: at most 64 characters")
	}
	d, err := s.Store.DatasetByID(c.Request().Context(), req.Dataset)
	if err != nil {
		return err
	}
	_, me, err := s.party(c, req.Purpose)
	if err != nil {
		return err
	}
	access, contract := parsePolicy(d.AccessPolicy), parsePolicy(d.ContractPolicy)
	if ok, _ := access.Allows(me); !ok {
		return echo.NewHTTPError(http.StatusNotFound, "dataset "+d.ID+" not found")
	}
	if ok, why := contract.Allows(me); !ok {
		s.Metrics.Reject(metrics.RejectForbidden)
		return echo.NewHTTPError(http.StatusForbidden, "the dataset's contract policy does not allow you: "+why)
	}
	now := time.Now().UTC()
	k := &store.Contract{ID: auth.NewSecret(12), Dataset: d.ID, Consumer: subject(c), Provider: d.Owner, Kind: d.Type,
		Purpose: req.Purpose, State: dataspace.StateRequested, StartAt: now}
	switch {
	case d.Type == "rental" && (req.EndAt == nil || !req.EndAt.After(now)):
		return echo.NewHTTPError(http.StatusBadRequest, "end_at: a rental needs an end in the future")
	case d.Type != "rental" && req.EndAt != nil:
		return echo.NewHTTPError(http.StatusBadRequest, "end_at: only rentals end")
	}
	if req.EndAt != nil {
		end := req.EndAt.UTC()
		k.EndAt = &end
	}
	if d.Type == "free" {
		k.State, k.AgreedBy, k.AgreedAt = dataspace.StateFinalized, "policy", &now
	}
	if err := s.Store.CreateContract(c.Request().Context(), k); err != nil {
		return err
	}
	s.Log.Info("contract requested", "contract", k.ID, "dataset", d.ID, "consumer", k.Consumer, "state", k.State)
	return c.JSON(http.StatusCreated, contractView(k))
}

func (s *Server) listContracts(c echo.Context) error {
	q := store.ContractQuery{Dataset: c.QueryParam("dataset")}
	switch role(c) {
	case store.RoleConsumer:
		q.Consumer = subject(c)
	case store.RoleProvider:
		q.Provider = subject(c)
	}
	ks, err := s.Store.Contracts(c.Request().Context(), q)
	if err != nil {
		return err
	}
	out := make([]ContractView, 0, len(ks))
	for i := range ks {
		out = append(out, contractView(&ks[i]))
	}
	return c.JSON(http.StatusOK, map[string]any{"contracts": out})
}

// contractFor loads a contract the caller may act on as its provider (or
// an admin); anyone else is told it does not exist.
func (s *Server) contractFor(c echo.Context, asConsumerToo bool) (*store.Contract, error) {
	k, err := s.Store.ContractByID(c.Request().Context(), c.Param("id"))
	if err != nil {
		return nil, err
	}
	me, r := subject(c), role(c)
	if r == store.RoleAdmin || k.Provider == me || (asConsumerToo && k.Consumer == me) {
		return k, nil
	}
	s.Metrics.Reject(metrics.RejectForbidden)
	return nil, echo.NewHTTPError(http.StatusNotFound, "contract "+k.ID+" not found")
}

// agreeContract: the provider (or an admin) validates a request with a
// signed document; the contract is finalized (active).
func (s *Server) agreeContract(c echo.Context) error {
	k, err := s.contractFor(c, false)
	if err != nil {
		return err
	}
	var req struct {
		Document string `json:"document"`
	}
	if err := bind(c, &req); err != nil {
		return err
	}
	if req.Document == "" || len(req.Document) > 64<<10 {
		return echo.NewHTTPError(http.StatusBadRequest, "document: the signed validation, 1 byte to 64 KiB")
	}
	if k.State != dataspace.StateRequested {
		return echo.NewHTTPError(http.StatusConflict, "contract "+k.ID+" is "+k.State+", not REQUESTED")
	}
	now := time.Now().UTC()
	k.State, k.Document, k.AgreedBy, k.AgreedAt = dataspace.StateFinalized, req.Document, subject(c), &now
	if err := s.Store.SaveContract(c.Request().Context(), k); err != nil {
		return err
	}
	s.Log.Info("contract agreed", "contract", k.ID, "dataset", k.Dataset, "by", subject(c))
	return c.JSON(http.StatusOK, contractView(k))
}

func (s *Server) terminateContract(c echo.Context) error {
	k, err := s.contractFor(c, true)
	if err != nil {
		return err
	}
	if k.State == dataspace.StateTerminated {
		return echo.NewHTTPError(http.StatusConflict, "contract "+k.ID+" is already terminated")
	}
	k.State, k.TerminatedBy = dataspace.StateTerminated, subject(c)
	if err := s.Store.SaveContract(c.Request().Context(), k); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, contractView(k))
}

// readableDataset is a dataset the caller may read now: its owner or an
// admin, or a consumer with an active contract whose policy still allows
// them. It returns the contract the read happens under.
func (s *Server) readableDataset(c echo.Context) (*store.Dataset, *engineT, string, error) {
	if role(c) != store.RoleConsumer {
		d, eng, err := s.ownDataset(c)
		return d, eng, "", err
	}
	ctx := c.Request().Context()
	d, err := s.Store.DatasetByID(ctx, c.Param("id"))
	if err != nil {
		return nil, nil, "", err
	}
	ks, err := s.Store.Contracts(ctx, store.ContractQuery{Consumer: subject(c), Dataset: d.ID})
	if err != nil {
		return nil, nil, "", err
	}
	now := time.Now()
	for i := range ks {
		end := time.Time{}
		if ks[i].EndAt != nil {
			end = *ks[i].EndAt
		}
		if !dataspace.Active(ks[i].State, end, now) {
			continue
		}
		_, me, err := s.party(c, ks[i].Purpose)
		if err != nil {
			return nil, nil, "", err
		}
		pol := parsePolicy(d.ContractPolicy)
		if ok, why := pol.Allows(me); !ok {
			s.Metrics.Reject(metrics.RejectForbidden)
			return nil, nil, "", echo.NewHTTPError(http.StatusForbidden, "the dataset's contract policy no longer allows you: "+why)
		}
		eng, err := parseEngine(d)
		if err != nil {
			return nil, nil, "", err
		}
		return d, eng, ks[i].ID, nil
	}
	s.Metrics.Reject(metrics.RejectForbidden)
	return nil, nil, "", echo.NewHTTPError(http.StatusForbidden, "no active contract for dataset "+d.ID)
}

// datasetAudit: who read a dataset (its owner, or an admin).
func (s *Server) datasetAudit(c echo.Context) error {
	d, _, err := s.ownDataset(c)
	if err != nil {
		return err
	}
	limit, err := queryInt(c, "limit", 100, 1, 1000)
	if err != nil {
		return err
	}
	es, err := s.Store.AuditLog(c.Request().Context(), "", d.ID, limit)
	if err != nil {
		return err
	}
	type view struct {
		Time     time.Time `json:"time"`
		User     string    `json:"user"`
		Contract string    `json:"contract,omitempty"`
		Query    string    `json:"query"`
		Records  int       `json:"records"`
	}
	out := make([]view, 0, len(es))
	for _, e := range es {
		out = append(out, view{time.UnixMicro(e.TimeUS).UTC(), e.User, e.Contract, e.Query, e.Records})
	}
	return c.JSON(http.StatusOK, map[string]any{"audit": out})
}

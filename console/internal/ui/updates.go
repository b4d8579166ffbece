package ui

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/cloudskin/cloudskin/console/internal/ota"
	"github.com/cloudskin/cloudskin/console/internal/store"
)

// The Updates page: OTA bundles and rollouts of the agent, through the API
// (docs/api.md, "OTA: bundles and rollouts").

type updatesData struct {
	CSRF     string
	Bundles  []ota.Bundle
	Rollouts rolloutsList
	Err      string // over-the-air updates unavailable on this console (503)
}

func (d updatesData) flash() (string, string) { return "", d.Err }

// rolloutsList is the rollouts table (htmx refreshes it).
type rolloutsList []rolloutView

// rolloutView is a rollout with what its templates ask of it.
type rolloutView struct {
	ota.Rollout
	CSRF string
}

// Live says the rollout still changes on its own: running, or halted with
// nodes of its last wave still updating.
func (r rolloutView) Live() bool {
	return r.State == store.RolloutRunning || r.Counts[store.NodeUpdating] > 0
}

// Cancellable: completed and cancelled rollouts are final.
func (r rolloutView) Cancellable() bool {
	return r.State == store.RolloutRunning || r.State == store.RolloutHalted
}

// SelectorText is the selector in words.
func (r rolloutView) SelectorText() string {
	var parts []string
	keys := make([]string, 0, len(r.Selector.Labels))
	for k := range r.Selector.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		parts = append(parts, k+"="+r.Selector.Labels[k])
	}
	if len(r.Selector.Nodes) > 0 {
		parts = append(parts, "nodes "+strings.Join(r.Selector.Nodes, ", "))
	}
	if len(parts) == 0 {
		return "every node"
	}
	return strings.Join(parts, ", ")
}

// Updated is how many nodes of the rollout are settled, of how many.
func (r rolloutView) Updated() string {
	total := 0
	for _, n := range r.Counts {
		total += n
	}
	return fmt.Sprintf("%d committed, %d failed of %d", r.Counts[store.NodeCommitted], r.Counts[store.NodeFailed], total)
}

// nodePercent is a node's progress bar: its download progress, full once
// it committed.
func nodePercent(n ota.NodeProgress) int {
	if n.State == store.NodeCommitted {
		return 100
	}
	return int(n.Progress*100 + 0.5)
}

func (u *UI) updatesData(c echo.Context) (updatesData, error) {
	ctx, s := c.Request().Context(), sess(c)
	d := updatesData{CSRF: s.CSRF}
	var bs struct {
		Bundles []ota.Bundle `json:"bundles"`
	}
	if err := u.call(ctx, s.Token, http.MethodGet, "/api/v1/bundles", nil, &bs); err != nil {
		if statusOf(err) != http.StatusServiceUnavailable {
			return d, err
		}
		d.Err = errorText(err)
		return d, nil
	}
	rs, err := u.rolloutsList(c)
	if err != nil {
		return d, err
	}
	d.Bundles, d.Rollouts = bs.Bundles, rs
	return d, nil
}

func (u *UI) rolloutsList(c echo.Context) (rolloutsList, error) {
	var rs struct {
		Rollouts []ota.Rollout `json:"rollouts"`
	}
	if err := u.call(c.Request().Context(), sess(c).Token, http.MethodGet, "/api/v1/rollouts?limit=50", nil, &rs); err != nil {
		return nil, err
	}
	out := make(rolloutsList, len(rs.Rollouts))
	for i, r := range rs.Rollouts {
		out[i] = rolloutView{Rollout: r, CSRF: sess(c).CSRF}
	}
	return out, nil
}

func (u *UI) updatesPage(c echo.Context) error {
	d, err := u.updatesData(c)
	if err != nil {
		return err
	}
	return u.render(c, http.StatusOK, "updates", "Updates", d)
}

// updatesRollouts is the rollouts table alone (htmx polls it).
func (u *UI) updatesRollouts(c echo.Context) error {
	rs, err := u.rolloutsList(c)
	if err != nil {
		return err
	}
	return u.fragment(c, http.StatusOK, "rollouts-table", rs)
}

// uploadBundle streams the multipart file to POST /api/v1/bundles as
// application/octet-stream: the API verifies it against the console's
// release key and answers its refusal in words.
func (u *UI) uploadBundle(c echo.Context) error {
	fh, err := c.FormFile("bundle")
	if err != nil {
		if errors.As(err, new(*http.MaxBytesError)) {
			return u.result(c, "bundle-uploaded", "", &apiError{Code: http.StatusRequestEntityTooLarge, Msg: ota.ErrTooLarge.Error()}, nil)
		}
		return u.result(c, "bundle-uploaded", "", &apiError{Code: http.StatusBadRequest, Msg: "choose a bundle file (bin/images/*.ota.tar.gz) to upload"}, nil)
	}
	f, err := fh.Open()
	if err != nil {
		return err
	}
	defer f.Close()
	var b ota.Bundle
	err = u.call(c.Request().Context(), sess(c).Token, http.MethodPost, "/api/v1/bundles",
		raw{stream: f, size: fh.Size, contentType: echo.MIMEOctetStream}, &b)
	if err != nil {
		return u.result(c, "bundle-uploaded", "", err, nil)
	}
	c.Response().Header().Set("HX-Trigger", "bundles-changed")
	return u.result(c, "bundle-uploaded", fmt.Sprintf("Bundle %s for %s verified and kept (%s, uploaded by %s). Roll it out below.",
		b.Version, b.Arch, humanBytes(b.Size), b.UploadedBy), nil, nil)
}

// rolloutStarted is the outcome of the start form: the rollout, or the
// nodes the API skipped when it would update none.
type rolloutStarted struct {
	Rollout *rolloutView
	Skipped []ota.Skip
}

// rolloutRequest builds the API's request from the start form; the API
// validates the values.
func rolloutRequest(c echo.Context) (ota.Request, error) {
	req := ota.Request{Bundle: strings.TrimSpace(c.FormValue("bundle"))}
	if req.Bundle == "" {
		return req, &apiError{Code: http.StatusBadRequest, Msg: "choose a bundle to roll out"}
	}
	for _, kv := range splitList(c.FormValue("labels")) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return req, &apiError{Code: http.StatusBadRequest, Msg: fmt.Sprintf("labels: %q is not key=value (write e.g. site=castelloli, power=green)", kv)}
		}
		if req.Selector.Labels == nil {
			req.Selector.Labels = map[string]string{}
		}
		req.Selector.Labels[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	req.Selector.Nodes = splitList(c.FormValue("nodes"))
	num := func(field string) (*int, error) {
		s := strings.TrimSpace(c.FormValue(field))
		if s == "" {
			return nil, nil
		}
		n, err := strconv.Atoi(s)
		if err != nil {
			return nil, &apiError{Code: http.StatusBadRequest, Msg: field + ": not a whole number"}
		}
		return &n, nil
	}
	var err error
	if req.Percent, err = num("percent"); err != nil {
		return req, err
	}
	if req.MaxFailures, err = num("max_failures"); err != nil {
		return req, err
	}
	for field, dst := range map[string]*int{"wave_size": &req.WaveSize, "health_seconds": &req.HealthSeconds} {
		n, err := num(field)
		if err != nil {
			return req, err
		}
		if n != nil {
			*dst = *n
		}
	}
	return req, nil
}

// startRollout posts the form to POST /api/v1/rollouts and answers with
// the rollout and its skipped nodes, or the refusal (a 422 lists why each
// matching node was skipped). A plain form post goes to the rollout's page.
func (u *UI) startRollout(c echo.Context) error {
	req, err := rolloutRequest(c)
	if err != nil {
		return u.result(c, "rollout-started", "", err, rolloutStarted{})
	}
	var r ota.Rollout
	if err := u.call(c.Request().Context(), sess(c).Token, http.MethodPost, "/api/v1/rollouts", req, &r); err != nil {
		var out rolloutStarted
		var ae *apiError
		if errors.As(err, &ae) && len(ae.Detail) > 0 {
			var detail struct {
				Skipped []ota.Skip `json:"skipped"`
			}
			if json.Unmarshal(ae.Detail, &detail) == nil && len(detail.Skipped) > 0 {
				out.Skipped = detail.Skipped
				if c.Request().Header.Get("HX-Request") != "true" { // the result page shows the message only
					why := make([]string, len(detail.Skipped))
					for i, s := range detail.Skipped {
						why[i] = s.Node + ": " + s.Reason
					}
					err = &apiError{Code: ae.Code, Msg: ae.Msg + " — " + strings.Join(why, "; ")}
				}
			}
		}
		return u.result(c, "rollout-started", "", err, out)
	}
	if c.Request().Header.Get("HX-Request") != "true" {
		return c.Redirect(http.StatusSeeOther, Prefix+"/rollouts/"+url.PathEscape(r.ID))
	}
	c.Response().Header().Set("HX-Trigger", "rollouts-changed")
	v := rolloutView{Rollout: r, CSRF: sess(c).CSRF}
	return u.result(c, "rollout-started", fmt.Sprintf("Rollout %s started: %d node(s) in %d wave(s).", r.ID, len(r.Nodes), r.Waves), nil,
		rolloutStarted{Rollout: &v, Skipped: r.Skipped})
}

func (u *UI) getRollout(c echo.Context) (rolloutView, error) {
	var r ota.Rollout
	err := u.call(c.Request().Context(), sess(c).Token, http.MethodGet, "/api/v1/rollouts/"+url.PathEscape(c.Param("id")), nil, &r)
	return rolloutView{Rollout: r, CSRF: sess(c).CSRF}, err
}

func (u *UI) rolloutPage(c echo.Context) error {
	r, err := u.getRollout(c)
	if err != nil {
		return err
	}
	return u.render(c, http.StatusOK, "rollout", "Rollout "+r.ID, r)
}

// rolloutProgress is a rollout's state and per-node progress; htmx polls
// it every 2 s while the rollout is live.
func (u *UI) rolloutProgress(c echo.Context) error {
	r, err := u.getRollout(c)
	if err != nil {
		return u.result(c, "", "", err, nil)
	}
	return u.fragment(c, http.StatusOK, "rollout-progress", r)
}

func (u *UI) cancelRollout(c echo.Context) error {
	var r ota.Rollout
	err := u.call(c.Request().Context(), sess(c).Token, http.MethodPost, "/api/v1/rollouts/"+url.PathEscape(c.Param("id"))+"/cancel", nil, &r)
	if err == nil {
		c.Response().Header().Set("HX-Trigger", "rollouts-changed")
	}
	return u.result(c, "", fmt.Sprintf("Rollout %s cancelled: nodes not started stay untouched, nodes updating have the update withdrawn.", r.ID), err, nil)
}

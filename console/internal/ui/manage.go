package ui

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/cloudskin/cloudskin/console/internal/api"
	"github.com/cloudskin/cloudskin/console/internal/store"
)

// modelRow is one registry version with its accuracy against the best
// baseline on held-out data.
type modelRow struct {
	store.LearningModel
	Features []string `json:"features"`
	Metrics  struct {
		Model struct {
			MAE float64 `json:"mae"`
			N   int     `json:"n"`
		} `json:"model"`
		Baselines map[string]struct {
			MAE float64 `json:"mae"`
		} `json:"baselines"`
		Best string `json:"best_baseline"`
	} `json:"metrics"`
}

// Accuracy says "MAE model vs best baseline" in words.
func (m modelRow) Accuracy() string {
	if m.Metrics.Model.N == 0 && m.Metrics.Best == "" {
		return "—"
	}
	b, ok := m.Metrics.Baselines[m.Metrics.Best]
	if !ok {
		return fmt.Sprintf("MAE %.3g", m.Metrics.Model.MAE)
	}
	verdict := "worse than"
	if m.Metrics.Model.MAE < b.MAE {
		verdict = "beats"
	}
	return fmt.Sprintf("MAE %.3g %s %s %.3g", m.Metrics.Model.MAE, verdict, m.Metrics.Best, b.MAE)
}

type modelsData struct {
	Models []modelRow
	Err    string
}

func (d modelsData) flash() (string, string) { return "", d.Err }

func (u *UI) modelsPage(c echo.Context) error {
	var resp struct {
		Models []modelRow `json:"models"`
	}
	d := modelsData{}
	if err := u.call(c.Request().Context(), sess(c).Token, http.MethodGet, "/api/v1/learning/models?limit=200", nil, &resp); err != nil {
		if statusOf(err) != http.StatusServiceUnavailable {
			return err
		}
		d.Err = errorText(err)
	}
	d.Models = resp.Models
	return u.render(c, http.StatusOK, "models", "Models", d)
}

func (u *UI) trainModels(c echo.Context) error {
	var rep struct {
		Ready    int `json:"ready"`
		NotReady int `json:"not_ready"`
		Failed   int `json:"failed"`
		TookNS   int64
	}
	err := u.call(c.Request().Context(), sess(c).Token, http.MethodPost, "/api/v1/learning/train", nil, &rep)
	return u.result(c, "", fmt.Sprintf("Trained: %d ready, %d not ready, %d failed. Reload to see the registry.", rep.Ready, rep.NotReady, rep.Failed), err, nil)
}

func (u *UI) promoteModel(c echo.Context) error {
	var m modelRow
	err := u.call(c.Request().Context(), sess(c).Token, http.MethodPost, "/api/v1/learning/models/"+url.PathEscape(c.Param("id"))+"/promote", nil, &m)
	return u.result(c, "", fmt.Sprintf("%s/%s v%d is served now.", m.Kind, m.Subject, m.Version), err, nil)
}

func (u *UI) rollbackModel(c echo.Context) error {
	var m modelRow
	err := u.call(c.Request().Context(), sess(c).Token, http.MethodPost, "/api/v1/learning/rollback",
		map[string]string{"kind": c.FormValue("kind"), "subject": c.FormValue("subject")}, &m)
	return u.result(c, "", fmt.Sprintf("Rolled back: %s/%s v%d is served now.", m.Kind, m.Subject, m.Version), err, nil)
}

type catalogEntry struct {
	api.DatasetView
	Qualifies bool   `json:"qualifies"`
	Why       string `json:"why"`
}

type auditEntry struct {
	Dataset  string
	Time     time.Time `json:"time"`
	User     string    `json:"user"`
	Contract string    `json:"contract"`
	Query    string    `json:"query"`
	Records  int64     `json:"records"`
}

type dataspaceData struct {
	Role      string
	Me        string
	Catalog   []catalogEntry
	Mine      []catalogEntry
	Contracts []api.ContractView
	Audit     []auditEntry
	Errs      []string
}

func (d dataspaceData) flash() (string, string) { return "", strings.Join(d.Errs, "; ") }

func (u *UI) dataspacePage(c echo.Context) error {
	ctx, s := c.Request().Context(), sess(c)
	d := dataspaceData{Role: s.User.Role, Me: s.User.Username}
	var cat struct {
		Datasets []catalogEntry `json:"datasets"`
	}
	if err := u.call(ctx, s.Token, http.MethodGet, "/api/v1/catalog", nil, &cat); err != nil {
		return err
	}
	d.Catalog = cat.Datasets
	for _, ds := range cat.Datasets {
		if ds.Owner == s.User.Username {
			d.Mine = append(d.Mine, ds)
		}
	}
	var ks struct {
		Contracts []api.ContractView `json:"contracts"`
	}
	if err := u.call(ctx, s.Token, http.MethodGet, "/api/v1/contracts", nil, &ks); err != nil {
		d.Errs = append(d.Errs, "contracts: "+errorText(err))
	}
	d.Contracts = ks.Contracts
	// The audit log of the caller's own datasets (an admin: of every one).
	for _, ds := range cat.Datasets {
		if ds.Owner != s.User.Username && s.User.Role != roleAdmin {
			continue
		}
		var a struct {
			Audit []auditEntry `json:"audit"`
		}
		if err := u.call(ctx, s.Token, http.MethodGet, "/api/v1/datasets/"+url.PathEscape(ds.ID)+"/audit", nil, &a); err != nil {
			d.Errs = append(d.Errs, "audit of "+ds.ID+": "+errorText(err))
			continue
		}
		for _, e := range a.Audit {
			e.Dataset = ds.ID
			d.Audit = append(d.Audit, e)
		}
		if len(d.Audit) > 200 {
			break
		}
	}
	return u.render(c, http.StatusOK, "dataspace", "Dataspace", d)
}

func (u *UI) requestContract(c echo.Context) error {
	body := map[string]any{"dataset": c.FormValue("dataset"), "purpose": c.FormValue("purpose")}
	if e := strings.TrimSpace(c.FormValue("end_at")); e != "" {
		t, err := time.Parse("2006-01-02", e)
		if err != nil {
			return u.result(c, "", "", &apiError{Code: http.StatusBadRequest, Msg: "end date: want YYYY-MM-DD"}, nil)
		}
		body["end_at"] = t.UTC()
	}
	var k api.ContractView
	err := u.call(c.Request().Context(), sess(c).Token, http.MethodPost, "/api/v1/contracts", body, &k)
	return u.result(c, "", "Contract "+k.ID+" for "+k.Dataset+": "+k.State+".", err, nil)
}

func (u *UI) agreeContract(c echo.Context) error {
	var k api.ContractView
	doc := strings.TrimSpace(c.FormValue("document"))
	if doc == "" {
		doc = "agreed in the console by " + sess(c).User.Username
	}
	err := u.call(c.Request().Context(), sess(c).Token, http.MethodPost, "/api/v1/contracts/"+url.PathEscape(c.Param("id"))+"/agree",
		map[string]string{"document": doc}, &k)
	return u.result(c, "", "Contract "+k.ID+" is "+k.State+".", err, nil)
}

func (u *UI) terminateContract(c echo.Context) error {
	var k api.ContractView
	err := u.call(c.Request().Context(), sess(c).Token, http.MethodPost, "/api/v1/contracts/"+url.PathEscape(c.Param("id"))+"/terminate", nil, &k)
	return u.result(c, "", "Contract "+k.ID+" is "+k.State+".", err, nil)
}

type adminData struct {
	Users []api.UserView
	Me    string
}

func (u *UI) adminPage(c echo.Context) error {
	var resp struct {
		Users []api.UserView `json:"users"`
	}
	if err := u.call(c.Request().Context(), sess(c).Token, http.MethodGet, "/api/v1/users", nil, &resp); err != nil {
		return err
	}
	return u.render(c, http.StatusOK, "admin", "Administration", adminData{Users: resp.Users, Me: sess(c).User.Username})
}

func (u *UI) approveUser(c echo.Context) error {
	name := c.Param("name")
	err := u.call(c.Request().Context(), sess(c).Token, http.MethodPost, "/api/v1/users/"+url.PathEscape(name)+"/approve", nil, nil)
	return u.result(c, "", "User "+name+" approved.", err, nil)
}

func (u *UI) disableUser(c echo.Context) error {
	name := c.Param("name")
	err := u.call(c.Request().Context(), sess(c).Token, http.MethodPost, "/api/v1/users/"+url.PathEscape(name)+"/disable", nil, nil)
	return u.result(c, "", "User "+name+" disabled.", err, nil)
}

// createToken makes an enrollment token and shows it once.
func (u *UI) createToken(c echo.Context) error {
	body := map[string]string{"ttl": strings.TrimSpace(c.FormValue("ttl")), "description": c.FormValue("description")}
	if body["ttl"] == "" {
		body["ttl"] = "24h"
	}
	var resp struct {
		Token     string    `json:"token"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	if err := u.call(c.Request().Context(), sess(c).Token, http.MethodPost, "/api/v1/tokens", body, &resp); err != nil {
		return u.result(c, "", "", err, nil)
	}
	return u.result(c, "token", "", nil, resp)
}

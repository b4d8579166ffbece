// Package dataspace holds the dataspace's rules: ODRL-like policies over a
// user's verified profile, and the contract lifecycle named as the Eclipse
// Dataspace Protocol names it. It is pure: the API stores and enforces.
package dataspace

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// ErrInvalid wraps a malformed policy or request.
var ErrInvalid = errors.New("invalid")

// Left operands a constraint may test.
const (
	OpCountry   = "participantCountry" // the user's nationality (ISO 3166-1 alpha-2)
	OpIndustry  = "industry"           // the user's business sector
	OpOrgType   = "orgType"            // private | governmental | military | scientific | educational
	OpNonProfit = "nonProfit"          // the user's non-profit flag (true/false)
	OpPurpose   = "purpose"            // the purpose declared in the contract request
)

// Constraint is {leftOperand, operator, rightOperand}. Operators: eq, neq
// (one value), isAnyOf, isNoneOf (a list).
type Constraint struct {
	LeftOperand  string          `json:"leftOperand"`
	Operator     string          `json:"operator"`
	RightOperand json.RawMessage `json:"rightOperand"`
}

// Rule is a permission or prohibition: it applies when all its
// constraints hold (a rule without constraints always applies).
type Rule struct {
	Constraints []Constraint `json:"constraints"`
}

// Policy allows a party when some permission applies and no prohibition
// does. Default deny: a policy without permissions allows nobody.
type Policy struct {
	Permissions  []Rule `json:"permissions"`
	Prohibitions []Rule `json:"prohibitions,omitempty"`
}

// Party is what a policy is evaluated against.
type Party struct {
	Country   string
	Industry  string
	OrgType   string
	NonProfit bool
	Purpose   string
}

// OpenPolicy allows everyone: one permission without constraints.
func OpenPolicy() Policy { return Policy{Permissions: []Rule{{Constraints: []Constraint{}}}} }

// Validate checks a policy's shape.
func (p *Policy) Validate() error {
	if len(p.Permissions)+len(p.Prohibitions) > 32 {
		return fmt.Errorf("%w: policy: at most 32 rules", ErrInvalid)
	}
	for _, rules := range [][]Rule{p.Permissions, p.Prohibitions} {
		for i, r := range rules {
			if len(r.Constraints) > 16 {
				return fmt.Errorf("%w: policy rule %d: at most 16 constraints", ErrInvalid, i)
			}
			for _, c := range r.Constraints {
				if _, err := c.values(); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// values checks a constraint and returns its right operand as strings.
func (c *Constraint) values() ([]string, error) {
	switch c.LeftOperand {
	case OpCountry, OpIndustry, OpOrgType, OpNonProfit, OpPurpose:
	default:
		return nil, fmt.Errorf("%w: constraint: leftOperand %q: use %s, %s, %s, %s or %s", ErrInvalid, c.LeftOperand, OpCountry, OpIndustry, OpOrgType, OpNonProfit, OpPurpose)
	}
	var vals []string
	switch c.Operator {
	case "eq", "neq":
		var v any
		if err := json.Unmarshal(c.RightOperand, &v); err != nil {
			return nil, fmt.Errorf("%w: constraint on %s: rightOperand: %v", ErrInvalid, c.LeftOperand, err)
		}
		switch v := v.(type) {
		case string:
			vals = []string{v}
		case bool:
			vals = []string{fmt.Sprint(v)}
		default:
			return nil, fmt.Errorf("%w: constraint on %s: rightOperand must be a string or a boolean", ErrInvalid, c.LeftOperand)
		}
	case "isAnyOf", "isNoneOf":
		if err := json.Unmarshal(c.RightOperand, &vals); err != nil || len(vals) == 0 || len(vals) > 256 {
			return nil, fmt.Errorf("%w: constraint on %s: rightOperand must be a list of 1-256 strings", ErrInvalid, c.LeftOperand)
		}
	default:
		return nil, fmt.Errorf("%w: constraint on %s: operator %q: use eq, neq, isAnyOf or isNoneOf", ErrInvalid, c.LeftOperand, c.Operator)
	}
	return vals, nil
}

func (p Party) value(op string) string {
	switch op {
	case OpCountry:
		return p.Country
	case OpIndustry:
		return p.Industry
	case OpOrgType:
		return p.OrgType
	case OpNonProfit:
		return fmt.Sprint(p.NonProfit)
	default:
		return p.Purpose
	}
}

func (c *Constraint) holds(p Party) bool {
	vals, err := c.values()
	if err != nil {
		return false
	}
	v := p.value(c.LeftOperand)
	in := slices.ContainsFunc(vals, func(x string) bool { return strings.EqualFold(x, v) })
	switch c.Operator {
	case "eq", "isAnyOf":
		return in
	default:
		return !in
	}
}

func (r *Rule) applies(p Party) bool {
	for i := range r.Constraints {
		if !r.Constraints[i].holds(p) {
			return false
		}
	}
	return true
}

// Allows reports whether the policy allows p, and if not, why.
func (pol *Policy) Allows(p Party) (bool, string) {
	for i := range pol.Prohibitions {
		if pol.Prohibitions[i].applies(p) {
			return false, "a prohibition applies: " + describe(pol.Prohibitions[i])
		}
	}
	for i := range pol.Permissions {
		if pol.Permissions[i].applies(p) {
			return true, ""
		}
	}
	if len(pol.Permissions) == 0 {
		return false, "the policy permits nobody"
	}
	return false, "no permission applies (" + describe(pol.Permissions[0]) + ")"
}

func describe(r Rule) string {
	var parts []string
	for _, c := range r.Constraints {
		parts = append(parts, fmt.Sprintf("%s %s %s", c.LeftOperand, c.Operator, string(c.RightOperand)))
	}
	if len(parts) == 0 {
		return "always"
	}
	return strings.Join(parts, " and ")
}

// Contract states, as the Dataspace Protocol names them.
const (
	StateRequested  = "REQUESTED"
	StateAgreed     = "AGREED"
	StateFinalized  = "FINALIZED"
	StateTerminated = "TERMINATED"
)

// Active reports whether a contract in state, ending at end (zero: never),
// grants access at now.
func Active(state string, end time.Time, now time.Time) bool {
	return state == StateFinalized && (end.IsZero() || now.Before(end))
}

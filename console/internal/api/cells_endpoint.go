package api

import (
	"encoding/json"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/cloudskin/cloudskin/console/internal/store"
	"github.com/cloudskin/cloudskin/shared/protocol"
)

// cellRequest places a cell on a node. Config is any JSON value, handed to
// the cell as its bytes.
type cellRequest struct {
	ID      string              `json:"id"`
	Node    string              `json:"node"`
	Module  string              `json:"module"`
	Config  json.RawMessage     `json:"config"`
	Inputs  []protocol.Input    `json:"inputs"`
	Outputs []string            `json:"outputs"`
	Limits  protocol.CellLimits `json:"limits"`
	// CheckpointSeconds: periodic checkpoints, so the cell survives the
	// loss of its node (0: none).
	CheckpointSeconds int `json:"checkpoint_seconds"`
	// Datasets forwards outputs into the dataspace (output → dataset id).
	Datasets map[string]string `json:"datasets"`
	// Priority: "" (normal), "low" (the node may pause it on its own when
	// it cannot reach the console and its energy runs short) or "high".
	Priority string `json:"priority"`
}

var cellWriteRoles = []string{store.RoleAdmin, store.RoleOperator}

func (s *Server) createCell(c echo.Context) error {
	var req cellRequest
	if err := bind(c, &req); err != nil {
		return err
	}
	spec := protocol.CellSpec{ID: req.ID, Module: req.Module, Config: []byte(req.Config), Inputs: req.Inputs,
		Outputs: req.Outputs, Limits: req.Limits, CheckpointSeconds: req.CheckpointSeconds, Datasets: req.Datasets,
		Priority: req.Priority}
	cell, err := s.Cells.Create(c.Request().Context(), spec, req.Node, subject(c))
	if err != nil {
		return err
	}
	c.Response().Header().Set(echo.HeaderLocation, "/api/v1/cells/"+cell.ID)
	return c.JSON(http.StatusCreated, cell)
}

func (s *Server) listCells(c echo.Context) error {
	cs, err := s.Cells.List(c.Request().Context(), c.QueryParam("node"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"cells": cs})
}

func (s *Server) getCell(c echo.Context) error {
	cell, err := s.Cells.Get(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, cell)
}

func (s *Server) cellEvents(c echo.Context) error {
	evs, err := s.Cells.Events(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"events": evs})
}

func (s *Server) deleteCell(c echo.Context) error {
	if err := s.Cells.Delete(c.Request().Context(), c.Param("id"), subject(c)); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

-- Argo CD health of a tenantry.dev Tenant, from its kstatus conditions,
-- phase and isolation attestation. Install as
-- resource.customizations.health.tenantry.dev_Tenant in argocd-cm
-- (docs/install.md). Tested against Tenants read from a real API server
-- and, for every phase and reason, beside kstatus's rules
-- (src/controller/status.rs).
local hs = {}

local function condition(status, type)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local status = obj.status
if status == nil or status.conditions == nil or #status.conditions == 0 then
  hs.status = "Progressing"
  hs.message = "Waiting for tenantry to report a status"
  return hs
end

-- Nothing in the status speaks for a spec tenantry has not seen yet, a
-- suspension included.
local generation = obj.metadata.generation
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for tenantry to observe generation " .. tostring(generation)
  return hs
end

if obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "Being deleted: access revoked, resources released or removed"
  return hs
end

if status.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = "The tenant is suspended: access is revoked"
  return hs
end

local stalled = condition(status, "Stalled")
if is_true(stalled) then
  hs.status = "Degraded"
  hs.message = (stalled.reason or "Stalled") .. ": " .. (stalled.message or "")
  return hs
end

-- Work in flight, a failure tenantry retries by itself among it.
local reconciling = condition(status, "Reconciling")
if is_true(reconciling) then
  hs.status = "Progressing"
  hs.message = (reconciling.reason or "Reconciling") .. ": " .. (reconciling.message or "")
  return hs
end

-- A status written before Failed was split into retried and final.
if status.phase == "Failed" then
  local ready = condition(status, "Ready")
  hs.status = "Degraded"
  hs.message = "Phase Failed"
  if ready ~= nil and ready.message ~= nil then
    hs.message = hs.message .. ": " .. ready.message
  end
  return hs
end

-- A provisioned tenant whose measured isolation is not Enforced.
if status.isolation ~= nil then
  for _, layer in ipairs({"database", "storage", "encryption"}) do
    local report = status.isolation[layer]
    if report ~= nil and report.state ~= nil and report.state ~= "Enforced" then
      hs.status = "Degraded"
      hs.message = "Isolation of the " .. layer .. " layer is " .. report.state
      return hs
    end
  end
end

local ready = condition(status, "Ready")
if is_true(ready) then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
  return hs
end

hs.status = "Progressing"
if ready ~= nil and ready.message ~= nil then
  hs.message = "Not ready yet: " .. ready.message
else
  hs.message = "Not ready yet"
end
return hs

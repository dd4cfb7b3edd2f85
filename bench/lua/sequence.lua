-- botocore's credential fetch: PUT a token, GET the role list, GET the credentials with the token.
-- Run with as many threads as connections (-t N -c N): the step belongs to the thread's one connection.
local step = 0
local token = ""
local role = "role-01"

request = function()
  if step == 0 then
    return wrk.format("PUT", "/latest/api/token", {["X-aws-ec2-metadata-token-ttl-seconds"] = "21600"}, "")
  elseif step == 1 then
    return wrk.format("GET", "/latest/meta-data/iam/security-credentials/", {["X-aws-ec2-metadata-token"] = token})
  end
  return wrk.format("GET", "/latest/meta-data/iam/security-credentials/" .. role,
                    {["X-aws-ec2-metadata-token"] = token})
end

response = function(status, headers, body)
  if step == 0 then token = body elseif step == 1 then role = body end
  step = (step + 1) % 3
end
